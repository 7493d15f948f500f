"""A training run killed with SIGKILL mid-epoch resumes from its last checkpoint; no checkpoint on
disk is ever half-written."""
import json
import os
import signal
import subprocess
import time

import pytest

from e2ehelp import _enro_data, demo, losses, train_argv  # noqa: F401  (fixtures: used by name)
from env import REPO
from unifairseq.fairseq.checkpoint_io import load_checkpoint_file

pytestmark = pytest.mark.slow


def test_sigkill_mid_epoch_then_resume(demo, tmp_path):
    save = tmp_path / "ckpt"
    argv = [str(a) for a in train_argv(demo, save, 40)] + ["--save-interval-updates", "3",
                                                           "--keep-interval-updates", "2"]
    log = open(tmp_path / "first.log", "w")
    p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    deadline = time.time() + 240
    while time.time() < deadline and p.poll() is None:
        done = losses((tmp_path / "first.log").read_text())
        if done and max(done) >= 7 and (save / "checkpoint_last.pt").exists():
            break
        time.sleep(0.2)
    assert p.poll() is None, "the run finished before it could be killed"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    log.close()
    # every checkpoint on disk is complete (fairseq writes *.tmp then renames; so do our exports)
    pts = sorted(save.glob("*.pt"))
    assert pts
    for f in pts:
        load_checkpoint_file(str(f))
    killed_at = load_checkpoint_file(str(save / "checkpoint_last.pt"))["optimizer_history"][-1]["num_updates"]
    assert 3 <= killed_at < 40
    # --keep-interval-updates 2: older update checkpoints are rotated away
    assert len(list(save.glob("checkpoint_*_*.pt"))) <= 2
    second = subprocess.run(argv, capture_output=True, text=True, cwd=REPO)
    assert second.returncode == 0, second.stderr[-3000:]
    resumed = losses(second.stdout + second.stderr)
    assert min(resumed) == killed_at + 1 and max(resumed) == 40, sorted(resumed)
    final = load_checkpoint_file(str(save / "checkpoint_last.pt"))
    assert final["optimizer_history"][-1]["num_updates"] == 40
    assert json.dumps(sorted(final["extra_state"]["train_iterator"]))  # iterator state saved
