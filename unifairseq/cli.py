"""What every `unifairseq-*` console script shares, so that the tools read as one command line.

* its usage line names the console script (`unifairseq-count`), also when run as `python -m ...`;
* one error style: `unifairseq-NAME: error: WHAT (and the fix)` on stderr, exit status 2 for input the
  user must change, 1 for a check that ran and failed, 130 when interrupted;
* one spelling of the options several tools take:
    --methods M [M ...]   presets, space- or comma-separated (`--methods mam lora_attn`, `--methods mam,lora_attn`)
    --batch-size N        sentences per step (per GPU), as fairseq spells it
    --max-tokens N        tokens per step (per GPU), as fairseq spells it
  Older spellings (`--batch`, `--per-gpu-batch`, `--per-gpu`) are still accepted and say which one replaced them.

Torch-free: importing it costs nothing.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Iterable, List, Optional, Sequence, Tuple, Type

from unifairseq.errors import UnifairseqError

USAGE_ERROR, CHECK_FAILED, INTERRUPTED = 2, 1, 130


class ToolError(UnifairseqError):
    """Bad input to a tool; the message names the problem and the fix."""


def parser(prog: str, doc: Optional[str], **kw) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=prog, description=doc,
                                   formatter_class=argparse.RawDescriptionHelpFormatter, **kw)


def error(prog: str, message, code: int = USAGE_ERROR) -> int:
    text = str(message).strip() or type(message).__name__
    print(f"{prog}: error: {text}", file=sys.stderr)
    return code


def run(prog: str, body: Callable[[], Optional[int]],
        errors: Tuple[Type[BaseException], ...] = ()) -> int:
    """Run a tool's body: unifairseq's user errors (and those it declares) become one line, not a traceback."""
    try:
        return body() or 0
    except (UnifairseqError, *errors) as e:
        return error(prog, e)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return INTERRUPTED


def _split(values: Iterable[str]) -> List[str]:
    return [m for v in values for m in v.replace(",", " ").split()]


def preset_names() -> List[str]:
    """The presets' names. They are declared by the method modules, which import torch: a parser takes
    this function (not its value) as `choices`, so that --help imports nothing heavy."""
    from unifairseq.core.presets import PRESETS  # torch: not at --help (see above)

    return list(PRESETS)


class _Methods(argparse.Action):
    def __call__(self, ap, namespace, values, option_string=None):
        choices = self.choices_list() if callable(self.choices_list) else self.choices_list
        names = _split(values if isinstance(values, list) else [values])
        if not names:
            ap.error(f"{option_string}: no method given; choose from {', '.join(choices or [])}")
        if choices is not None:
            unknown = [m for m in names if m not in choices]
            if unknown:
                ap.error(f"{option_string}: unknown {', '.join(unknown)}; choose from {', '.join(choices)}")
        setattr(namespace, self.dest, names)


def add_methods(ap: argparse.ArgumentParser, choices, default, what: str = "presets"):
    """`--methods`: space- or comma-separated, checked against `choices` (None: any name; a function:
    called only when --methods is given, e.g. `preset_names`, whose list --help then does not print)."""
    shown = f" (default: {' '.join(default)})" if isinstance(default, (list, tuple)) and default else ""
    listed = "" if not choices else (
        "; `python -m unifairseq.core.presets` lists the presets" if callable(choices) else f"; from: {' '.join(choices)}")
    act = ap.add_argument("--methods", nargs="+", action=_Methods, default=default, metavar="METHOD",
                          help=f"{what}, space- or comma-separated{shown}{listed}")
    act.choices_list = choices if callable(choices) or choices is None else list(choices)
    return act


class _OldSpelling(argparse.Action):
    def __call__(self, ap, namespace, values, option_string=None):
        print(f"{ap.prog}: note: {option_string} is now spelled {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_renamed(ap: argparse.ArgumentParser, new: str, old: Sequence[str], **kw):
    """The option `new`, plus hidden old spellings that still work (and say so)."""
    act = ap.add_argument(new, **kw)
    for o in old:
        alias = ap.add_argument(o, dest=act.dest, type=kw.get("type"), action=_OldSpelling,
                                help=argparse.SUPPRESS, default=argparse.SUPPRESS)
        alias.new = new
    return act


def add_batch_size(ap: argparse.ArgumentParser, default: int, help: str, old: Sequence[str] = ()):
    return add_renamed(ap, "--batch-size", old, type=int, default=default, metavar="N", help=help)
