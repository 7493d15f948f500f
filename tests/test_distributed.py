"""Two processes on CPU (gloo) through fairseq's own distributed training, no --find-unused-parameters:
the deltas equal a single-process run over the same batches (--update-freq 2), the base is untouched."""
import socket
import subprocess
import sys

import pytest
import torch

from e2ehelp import _enro_data, demo, train_argv  # noqa: F401  (fixtures: used by name)
from env import REPO
from unifairseq.fairseq.checkpoint_io import load_checkpoint_file

pytestmark = pytest.mark.slow


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# fairseq writes checkpoints from rank 0 only. To compare the ranks, each launched process runs
# fairseq-train's own entry point with save_checkpoint wrapped (in that test process only) to also
# write its rank's model state next to the checkpoint.
EVERY_RANK_SAVES = """
import sys, torch
import fairseq.checkpoint_utils as cu
from fairseq_cli.train import cli_main
orig = cu.save_checkpoint
def save_checkpoint(cfg, trainer, epoch_itr, val_loss):
    out = orig(cfg, trainer, epoch_itr, val_loss)
    sd = {k: v for k, v in trainer.get_model().state_dict().items() if torch.is_tensor(v)}
    torch.save(sd, f"{cfg.save_dir}/rank{trainer.data_parallel_rank}.pt")
    return out
cu.save_checkpoint = save_checkpoint
sys.argv = sys.argv[1:]
sys.exit(cli_main())
"""


def test_two_rank_gloo_training_matches_single_process(demo, tmp_path):
    common = ["--delta-save-full", "--no-save-optimizer-state", "--dropout", "0"]  # same numbers either way
    single = [str(a) for a in train_argv(demo, tmp_path / "single", 4)] + common + ["--update-freq", "2"]
    p = subprocess.run(single, capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0, p.stderr[-3000:]
    port = free_port()
    procs = []
    for rank in range(2):
        argv = [sys.executable, "-c", EVERY_RANK_SAVES] + [str(a) for a in train_argv(demo, tmp_path / "ddp", 4)] + common + [
            "--distributed-world-size", "2", "--distributed-rank", str(rank), "--distributed-backend", "gloo",
            "--distributed-init-method", f"tcp://127.0.0.1:{port}", "--distributed-no-spawn",
            "--ddp-backend", "legacy_ddp"]
        procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO))
    outs = [pr.communicate(timeout=600)[0] for pr in procs]
    for pr, out in zip(procs, outs):
        assert pr.returncode == 0, "\n".join(o[-2500:] for o in outs)
    assert "distributed init (rank 1)" in outs[1] + outs[0]
    a = load_checkpoint_file(str(tmp_path / "single" / "checkpoint_last.pt"))["model"]
    b = load_checkpoint_file(str(tmp_path / "ddp" / "checkpoint_last.pt"))["model"]
    base = load_checkpoint_file(str(demo / "tiny_bart.pt"))["model"]
    changed = 0
    for k, v in b.items():
        if not torch.is_tensor(v) or v.dtype == torch.uint8:
            continue
        if k in base:
            assert torch.equal(v, base[k]), f"base tensor {k} changed under DDP"
        else:
            assert torch.allclose(v, a[k], atol=1e-5), f"{k}: 2-rank DDP differs from update-freq 2"
            changed += 1
    assert changed > 0
    # the two ranks hold the same deltas, bit for bit, and rank 0's equal what fairseq saved
    r0, r1 = (torch.load(tmp_path / "ddp" / f"rank{r}.pt") for r in (0, 1))
    assert r0.keys() == r1.keys() and sum(1 for k in r0 if k not in base) >= changed
    for k in r0:
        assert torch.equal(r0[k], r1[k]), f"{k} differs between rank 0 and rank 1"
        if k in b:
            assert torch.equal(r0[k], b[k]), k
