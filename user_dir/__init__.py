# fairseq --user-dir shim: importing the package's modules registers their models, architectures
# and tasks with fairseq.
import unifairseq.models  # noqa: F401
import unifairseq.optim  # noqa: F401
import unifairseq.tasks  # noqa: F401
