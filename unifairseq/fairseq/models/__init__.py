"""Importing this module runs the @register_model / @register_model_architecture decorators, and (as
part of what --user-dir does) reports unifairseq's own user errors in one line (sharing.install_error_hook)."""
from unifairseq.fairseq.models import bart, roberta, sharing  # noqa: F401

sharing.install_error_hook()
