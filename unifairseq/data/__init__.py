"""Shared data helpers (standard library only): the data root and the GLUE TSV reader."""
from .tsv import GlueTable, TsvError, default_data_root, read_glue_tsv, resolve_data_root  # noqa: F401
