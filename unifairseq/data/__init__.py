"""Data: the data root and the GLUE TSV reader (tsv.py), the scripts' preparation steps (prepare.py),
GPT-2 BPE (bpe.py) and the check of binarized data (check.py). No torch and no fairseq at import:
the standard library, and numpy for check.py's reading of fairseq's index files; fairseq's GPT-2
encoder, sentencepiece and fairseq-preprocess are loaded by the steps that run them.

Only the TSV reader is imported here, so `import unifairseq.data` stays the standard library."""
from .tsv import GlueTable, TsvError, default_data_root, read_glue_tsv, resolve_data_root  # noqa: F401
