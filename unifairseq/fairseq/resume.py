"""Resume that survives a torn `checkpoint_last.pt`.

fairseq 0.12.3's save_checkpoint writes the first checkpoint of a save atomically (`.tmp`, then a
rename: checkpoint_utils.torch_persistent_save) but then *copies* it to the others --
`checkpoint_last.pt`, `checkpoint_best.pt` -- with PathManager.copy, in place. Killed during that copy,
`checkpoint_last.pt` is cut short and the next fairseq-train dies in torch's PytorchStreamReader
traceback. fairseq builds the model before it reads `checkpoint_last.pt`, so the delta model's build
(models/common.py) calls `repair_last_checkpoint` first: an unreadable
`SAVE_DIR/checkpoint_last.pt` is moved aside to `checkpoint_last.pt.torn` (never deleted) and replaced,
atomically, by a copy of the newest readable checkpoint of the folder, with a one-line notice; fairseq
then resumes from that checkpoint's update. With no readable checkpoint to fall back on, nothing is
touched and the run stops with one line saying so.

Only fairseq-train repairs (fairseq-generate and the hub build the same models from a checkpoint's
saved arguments, whose save_dir is the training folder: they must not move files there), and only its
first process (distributed rank 0, the one that reads the checkpoint).
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import sys
import zipfile
from typing import List, Optional

import torch
import torch.distributed as dist

from unifairseq.fairseq.checkpoint_io import DeltaCheckpointError
from unifairseq.fairseq.safe_globals import register_safe_globals

logger = logging.getLogger("unifairseq.fairseq.resume")

LAST = "checkpoint_last.pt"
_CHECKPOINT = re.compile(r"^checkpoint.*\.pt$")


def in_fairseq_train() -> bool:
    """fairseq-train (console script or `python -m fairseq_cli.train`, and its spawned workers)."""
    main = getattr(sys.modules.get("__main__"), "__spec__", None)
    return "fairseq_cli.train" in sys.modules or getattr(main, "name", None) == "fairseq_cli.train"


def _rank() -> int:
    """The distributed rank (fairseq initialises torch.distributed before it builds the model; the model's
    args keep the parsed --distributed-rank, the same in every worker)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def readable(path: str) -> bool:
    """Whether torch can read the file whole. A torch zip checkpoint is checked member by member against
    its CRCs (a torn copy lacks the zip's central directory at the end and fails at once), without
    unpickling; any other file is loaded with weights_only=True."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                return z.testzip() is None
        register_safe_globals()
        torch.load(path, map_location="cpu", weights_only=True)
        return True
    except Exception:  # unreadable, for whatever reason: that is the answer
        return False


def _aside(path: str) -> str:
    """A free name beside `path` for the torn file: .torn, then .torn.1, .torn.2, ... (never overwritten)."""
    target, n = path + ".torn", 0
    while os.path.exists(target):
        n += 1
        target = f"{path}.torn.{n}"
    return target


def _candidates(save_dir: str) -> List[str]:
    names = [n for n in os.listdir(save_dir) if _CHECKPOINT.match(n) and n != LAST]
    paths = [os.path.join(save_dir, n) for n in names if os.path.isfile(os.path.join(save_dir, n))]
    return sorted(paths, key=lambda p: os.path.getmtime(p), reverse=True)  # newest first


def repair_last_checkpoint(args) -> Optional[str]:
    """On a fairseq-train relaunch: an unreadable SAVE_DIR/checkpoint_last.pt becomes the newest readable
    checkpoint of the folder (the torn file kept as .torn). Returns the checkpoint resumed from, or None
    when nothing was done."""
    restore = getattr(args, "restore_file", None) or LAST
    if restore != LAST or not in_fairseq_train() or _rank() != 0:
        return None  # an explicit --restore-file is the user's choice: fairseq reports it as it is
    save_dir = getattr(args, "save_dir", None) or "checkpoints"
    last = os.path.join(save_dir, LAST)
    if not os.path.isfile(last) or readable(last):
        return None
    size = os.path.getsize(last)
    fallback = next((p for p in _candidates(save_dir) if readable(p)), None)
    if fallback is None:
        raise DeltaCheckpointError(
            f"{last} ({size:,} bytes) is truncated or corrupt (a fairseq-train killed while copying it?) and no "
            f"other checkpoint in {save_dir} is readable: restore it from a copy, or move it away to start again")
    torn = _aside(last)
    tmp = os.path.join(save_dir, f".{LAST}.tmp.{os.getpid()}")
    try:
        shutil.copyfile(fallback, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        # the torn bytes kept under a second name, then replaced atomically: checkpoint_last.pt never goes missing,
        # since under DDP the other ranks look for it meanwhile (a missing one makes fairseq start them afresh)
        try:
            os.link(last, torn)
        except OSError:  # a filesystem without hard links
            shutil.copyfile(last, torn)
        os.replace(tmp, last)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    logger.warning(f"unifairseq: {last} ({size:,} bytes) is unreadable (a torn copy?): moved to "
                   f"{os.path.basename(torn)}; resuming from {os.path.basename(fallback)}, the newest readable "
                   "checkpoint in the folder")
    return fallback
