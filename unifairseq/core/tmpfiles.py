"""Temporary files of our own atomic writes, and the ones a killed export left behind.

Every unifairseq write goes to `.NAME.tmp.PID` beside its target and is renamed into place
(fairseq/checkpoint_io.py atomic_save, core/deltafile.py write_delta, fairseq/resume.py). A process killed
before the rename leaves that file; nothing else would ever remove it. The next write into the same
folder removes the ones that follow exactly this naming and whose process is gone, in one notice
line, and reports (and keeps) those whose PID is a running process -- another export writing now, or a
PID the system has reused. Standard library only.
"""
from __future__ import annotations

import logging
import os
import re
from typing import Iterable, List, Optional

logger = logging.getLogger("unifairseq.tmpfiles")

_TMP = re.compile(r"^\.(?P<name>.+)\.tmp\.(?P<pid>[0-9]+)$")


def tmp_path(path: str) -> str:
    """`.NAME.tmp.PID` beside `path`: the name every atomic write of unifairseq uses."""
    d, name = os.path.split(os.path.abspath(path))
    return os.path.join(d, f".{name}.tmp.{os.getpid()}")


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    except OverflowError:  # not a PID this system can have
        return False
    return True


def sweep_stale(folder: str, names: Optional[Iterable[str]] = None, suffix: Optional[str] = None) -> List[str]:
    """Remove `folder`'s `.NAME.tmp.PID` files of processes that are gone, for NAME in `names` (or NAME
    ending with `suffix`); returns the removed paths. Anything else in the folder is left alone."""
    names = set(names or ())
    try:
        entries = sorted(os.listdir(folder))
    except OSError:  # no folder yet: nothing left over
        return []
    removed, kept = [], []
    for entry in entries:
        m = _TMP.match(entry)
        if not m or not (m["name"] in names or (suffix and m["name"].endswith(suffix))):
            continue
        path = os.path.join(folder, entry)
        if not os.path.isfile(path) or os.path.islink(path):
            continue
        if _running(int(m["pid"])):
            kept.append(entry)
            continue
        try:
            os.remove(path)
            removed.append(path)
        except OSError:
            kept.append(entry)
    if removed:
        logger.warning(f"unifairseq: removed {len(removed)} temporary file(s) of an interrupted earlier write in "
                       f"{folder}: {', '.join(os.path.basename(p) for p in removed)}")
    if kept:
        logger.warning(f"unifairseq: kept {', '.join(kept)} in {folder}: its process ID is a running process (an "
                       "export writing now, or a reused ID); remove it yourself once no export writes into this folder")
    return removed
