"""The root of unifairseq's user errors: input a person must change, said in one line that names the
problem and the fix. Every tool prints these as `unifairseq-NAME: error: ...` (unifairseq.cli), and
fairseq's command lines under --user-dir as `unifairseq: error: ...` (register() installs the hook);
anything else is a bug and keeps its traceback. Standard library only."""


class UnifairseqError(Exception):
    """Bad input; the message names the problem and the fix."""
