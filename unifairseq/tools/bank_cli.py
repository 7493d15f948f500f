"""unifairseq-bank: build a bank checkpoint, or extract one delta of it (the commands: tools/bank_build.py run).

The parser is built here, without torch or fairseq, so that `unifairseq-bank --help` imports neither;
the bank module (which imports fairseq) is imported once the arguments are parsed.
"""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="unifairseq-bank",
                                 description="build: a bank checkpoint from a base and delta files or folders, for "
                                             "fairseq-generate/-interactive --task delta_bank --path OUT; "
                                             "extract: one delta of a bank checkpoint as a single-delta checkpoint")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("out", metavar="OUT.pt")
    b.add_argument("deltas", nargs="+", metavar="NAME=DELTA", help="a delta .pt file or a shared delta folder")
    b.add_argument("--base", required=True, help="the plain base the deltas were trained on: a name or a checkpoint")
    b.add_argument("--data", required=True, help="fairseq-preprocess output with the base's dictionaries")
    b.add_argument("--source-lang")
    b.add_argument("--target-lang")
    b.add_argument("--force", action="store_true", help="replace OUT if it exists")
    x = sub.add_parser("extract", help="one delta of a bank checkpoint as a single-delta checkpoint")
    x.add_argument("bank", metavar="BANK.pt")
    x.add_argument("name", metavar="NAME")
    x.add_argument("out", metavar="OUT.pt")
    x.add_argument("--data", help="fairseq-preprocess output with the base's dictionaries (default: the bank's)")
    x.add_argument("--base", help="the bank's base, a name or a checkpoint (default: the path the bank records)")
    x.add_argument("--force", action="store_true", help="replace OUT if it exists")
    a = ap.parse_args(argv)
    from unifairseq.tools.bank_build import run  # deferred: fairseq and torch (see above)

    return run(a)


if __name__ == "__main__":
    sys.exit(main())
