"""An export killed before its rename leaves `.NAME.tmp.PID` (unifairseq/core/tmpfiles.py): the next
export into the same folder removes it, with one notice line, when its process is gone; a file whose PID
is a running process is kept and reported; nothing else in the folder is touched."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys

import torch

from deltahelp import lora_config, lora_tensors
from env import REPO

PY = sys.executable

# atomic_save of an object whose pickling kills the process: torch.save has begun writing the tmp file
KILLED_SAVE = """
import os, signal, sys
from unifairseq.fairseq.checkpoint_io import atomic_save
class Die:
    def __reduce__(self):
        os.kill(os.getpid(), signal.SIGKILL)
atomic_save({"model": {"w": __import__("torch").zeros(1000)}, "die": Die()}, sys.argv[1])
"""

# write_delta killed after the tensors were written under their temporary name
KILLED_DELTA = """
import os, signal, sys
import safetensors.torch
from unifairseq.core.deltafile import write_delta
real = safetensors.torch.save_file
def save_then_die(*a, **k):
    real(*a, **k)
    os.kill(os.getpid(), signal.SIGKILL)
safetensors.torch.save_file = save_then_die
write_delta(sys.argv[1], {}, {"w": __import__("torch").zeros(3)})
"""


def killed(script: str, target) -> int:
    """Run `script` in a process that kills itself with SIGKILL; its PID (now gone)."""
    p = subprocess.Popen([PY, "-c", script, str(target)], cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = p.communicate(timeout=120)
    assert p.returncode == -signal.SIGKILL, err[-2000:]
    return p.pid


def tmp_files(folder):
    return sorted(n for n in os.listdir(folder) if ".tmp." in n)


def test_killed_export_leftovers_are_removed_by_the_next_export(tmp_path, caplog):
    from unifairseq.fairseq.checkpoint_io import atomic_save

    pid = killed(KILLED_SAVE, tmp_path / "mam.pt")
    (left,) = tmp_files(tmp_path)
    assert left == f".mam.pt.tmp.{pid}"  # killed inside torch.save, before the rename
    assert not (tmp_path / "mam.pt").exists()
    others = {"notes.tmp.1": b"user", ".notes.tmp.x": b"user", "checkpoint_last.pt.tmp": b"fairseq's own"}
    for name, data in others.items():
        (tmp_path / name).write_bytes(data)
    alive = subprocess.Popen([PY, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / f".lora.pt.tmp.{alive.pid}").write_bytes(b"being written")  # an export running now
        with caplog.at_level(logging.WARNING):
            atomic_save({"model": {"w": torch.ones(2)}}, str(tmp_path / "other.pt"))
    finally:
        alive.kill()
        alive.wait()
    assert torch.equal(torch.load(tmp_path / "other.pt", weights_only=True)["model"]["w"], torch.ones(2))
    assert sorted(os.listdir(tmp_path)) == sorted([f".lora.pt.tmp.{alive.pid}", "other.pt", *others])
    for name, data in others.items():
        assert (tmp_path / name).read_bytes() == data
    notes = [r.getMessage() for r in caplog.records]
    assert f"unifairseq: removed 1 temporary file(s) of an interrupted earlier write in {tmp_path}: {left}" in notes
    assert (f"unifairseq: kept .lora.pt.tmp.{alive.pid} in {tmp_path}: its process ID is a running process (an "
            "export writing now, or a reused ID); remove it yourself once no export writes into this folder") in notes


def test_killed_delta_folder_export_leftovers_are_removed(tmp_path, caplog):
    from unifairseq.core.deltafile import CONFIG_NAME, TENSORS_NAME, write_delta

    folder = tmp_path / "my_delta"
    pid = killed(KILLED_DELTA, folder)
    (left,) = tmp_files(folder)
    assert left == f".{TENSORS_NAME}.tmp.{pid}" and not (folder / CONFIG_NAME).exists()
    with caplog.at_level(logging.WARNING):
        write_delta(str(folder), lora_config(), lora_tensors())
    assert tmp_files(folder) == [] and sorted(os.listdir(folder)) == [CONFIG_NAME, TENSORS_NAME]
    assert [r.getMessage() for r in caplog.records if "temporary" in r.getMessage()] == [
        f"unifairseq: removed 1 temporary file(s) of an interrupted earlier write in {folder}: {left}"]
    from safetensors.torch import load_file

    got, want = load_file(str(folder / TENSORS_NAME)), lora_tensors()
    assert sorted(got) == sorted(want) and all(torch.equal(got[k], want[k]) for k in want)  # the new export, whole
