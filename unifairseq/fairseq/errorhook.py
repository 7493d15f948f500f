"""unifairseq's user errors as one line under fairseq's command lines (installed by register())."""
import sys

from unifairseq.errors import UnifairseqError


def install_error_hook() -> None:
    """fairseq-generate / fairseq-interactive / fairseq-train catch nothing: a damaged delta folder, a
    base that is not the delta's or not found, a bad flag would end in a traceback. Under --user-dir
    (register()), unifairseq's user errors (unifairseq.errors.UnifairseqError) are printed as their one
    line instead (exit status 1); every other exception goes to the previous hook unchanged. Installed once."""
    previous = sys.excepthook
    if getattr(previous, "_unifairseq", False):
        return

    def hook(kind, value, tb):
        # fairseq's trainer re-raises any load_state_dict error as a bare Exception ("Cannot load model
        # parameters from checkpoint"): the unifairseq error it hides is the one to print
        hidden = value
        while type(hidden) is Exception and isinstance(hidden.__context__, BaseException):
            hidden = hidden.__context__
        if isinstance(hidden, UnifairseqError):
            print(f"unifairseq: error: {hidden}", file=sys.stderr)
            return
        previous(kind, value, tb)

    hook._unifairseq = True
    sys.excepthook = hook
