"""python -m unifairseq.demo"""
import sys

from .cli import main

sys.exit(main())
