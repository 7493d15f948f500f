"""Importing this module runs the @register_model / @register_model_architecture decorators."""
from unifairseq.fairseq.models import bart, roberta  # noqa: F401
