# fairseq --user-dir shim: importing the package's models registers them with fairseq.
import unifairseq.models  # noqa: F401
