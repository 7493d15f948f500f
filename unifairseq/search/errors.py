"""The search's bad-input error: one line naming what to fix (the CLI prints it and exits 2)."""
from unifairseq.errors import UnifairseqError


class SearchError(UnifairseqError):
    """Bad search input: an unknown method or flag, a budget below every point, a storage that cannot
    connect, data without the split, a metric the task does not produce."""
