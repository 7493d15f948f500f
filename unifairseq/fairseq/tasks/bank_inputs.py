"""What `--task delta_bank` reads besides the data: the per-line delta names of `--delta-per-line FILE`
(or DATA/<split>.delta) and the `<delta=NAME>` tags of fairseq-interactive's lines.

All of it is checked before the first sentence is decoded, each problem as one line naming the file
(or input line) and the fix: a missing side file, a directory, bytes that are not UTF-8, an empty line
without a default delta, an unknown name, a malformed tag (`<delta=>`, `<DELTA=x>`: an error, never text
that becomes <unk>), a line longer than the model's source positions. Plain Python: no fairseq here.
"""
import os
import re
from typing import Callable, List, Optional, Sequence

from unifairseq.errors import UnifairseqError

TAG = re.compile(r"^<delta=([^<>\s]+)>\s*")
# what a user means as a tag: `<delta` in any case, with or without a name, spaces or the closing `>`
TAG_LIKE = re.compile(r"^\s*<\s*delta\b", re.IGNORECASE)
TAG_FORM = "<delta=NAME> (lower case, no spaces, at the very start of the line)"


class BankTaskError(UnifairseqError, ValueError):
    pass


def split_tag(line: str, where: str = "a line"):
    """(name or None, the line without its `<delta=NAME>` tag); a tag-like start that is not a tag is refused."""
    m = TAG.match(line)
    if m:
        return m.group(1), line[m.end():]
    if TAG_LIKE.match(line):
        shown = line.strip()[:40]
        raise BankTaskError(f"{where}: malformed delta tag at {shown!r}; write {TAG_FORM}, or remove it to use "
                            "--default-delta")
    return None, line


def read_delta_file(path: str, flag: str = "--delta-per-line") -> List[Optional[str]]:
    """One name per line; an empty line is None (the default delta)."""
    if os.path.isdir(path):
        raise BankTaskError(f"{flag} {path}: is a directory; give the file with one delta name per line of the split")
    if not os.path.isfile(path):
        raise BankTaskError(f"{flag} {path}: no such file; give the file with one delta name per line of the split "
                            "(an empty line: --default-delta)")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise BankTaskError(f"{path} line {line}: not UTF-8 text ({e.reason} at byte {e.start}); save the file "
                            "as UTF-8") from None
    return [line.strip() or None for line in text.splitlines()]


def check_names(names: Sequence[Optional[str]], bank_names: Sequence[str], default: Optional[str],
                where: Callable[[int], str]) -> None:
    """Every name known to the bank, and an empty one only with a default; `where(i)` names entry i."""
    known = set(bank_names)
    listed = ", ".join(bank_names)
    for i, n in enumerate(names):
        if n is None and default is None:
            raise BankTaskError(f"{where(i)}: names no delta and there is no --default-delta (nor the model's "
                                f"--bank-default); name one of the bank's deltas there ({listed}) or pass "
                                "--default-delta NAME")
        if n is not None and n not in known:
            raise BankTaskError(f"{where(i)}: unknown delta {n!r}; the bank has: {listed}")


def check_lengths(lengths: Sequence[int], limit: Optional[int], where: Callable[[int], str]) -> None:
    if limit is None:
        return
    for i, n in enumerate(lengths):
        if n > limit:
            raise BankTaskError(f"{where(i)}: {n} tokens, more than the model's {limit} source positions; shorten "
                                "or split the line")
