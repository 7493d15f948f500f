"""The fairseq `--user-dir` plugin that ships inside the installed package.

After `pip install unifairseq` (see README "pip install") there is no repository `user_dir/`;
the same shim lives at `unifairseq/plugin/unifairseq_plugin/`, and the console script
`unifairseq-user-dir` prints its path:

    fairseq-train DATA --user-dir "$(unifairseq-user-dir)" --arch mam_bart_base ...

fairseq's `import_user_module` does `sys.path.insert(0, parent)` and `import_module(basename)`.
The plugin therefore sits one level below this package, in a folder of its own: the parent put on
sys.path is `unifairseq/plugin/`, which holds nothing importable but `unifairseq_plugin`, a
top-level name no other distribution uses (putting `unifairseq/` itself on sys.path would make
`unifairseq/fairseq/`, `data/`, `core/`, ... importable as top-level `fairseq`, `data`, `core`).
The plugin has no `models/` or `tasks/` subfolders, so fairseq imports nothing else from it.
"""
import os
import sys

from unifairseq import cli

PLUGIN_NAME = "unifairseq_plugin"

PROG = "unifairseq-user-dir"


def user_dir() -> str:
    """Absolute path of the packaged `--user-dir` plugin."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), PLUGIN_NAME)


def main(argv=None) -> int:
    """`unifairseq-user-dir`: print the path for `fairseq-* --user-dir "$(unifairseq-user-dir)"`."""
    cli.parser(PROG, "Prints the path of unifairseq's fairseq plugin, for\n"
                     "  fairseq-train DATA --user-dir \"$(unifairseq-user-dir)\" ...").parse_args(argv)
    path = user_dir()
    if not os.path.isfile(os.path.join(path, "__init__.py")):
        return cli.error(PROG, f"the plugin {path} is missing from this install; reinstall unifairseq",
                         cli.CHECK_FAILED)
    print(path)
    return 0

if __name__ == "__main__":
    sys.exit(main())
