"""fairseq-train relaunched over a torn `checkpoint_last.pt` (fairseq copies it in place, not atomically):
the delta model's build moves it aside to `checkpoint_last.pt.torn` and resumes from the newest readable
checkpoint of the folder, with one notice line (unifairseq/fairseq/resume.py), on one process and on two (CPU
DDP, gloo). Tiny BART, synthetic data."""
from __future__ import annotations

import os
import subprocess
import sys
from argparse import Namespace

import pytest
import torch

from datahelp import write_copy_task
from env import REPO, tool_env

PY = sys.executable
DIMS = ["--encoder-layers", "2", "--decoder-layers", "2", "--encoder-embed-dim", "32", "--decoder-embed-dim", "32",
        "--encoder-ffn-embed-dim", "64", "--decoder-ffn-embed-dim", "64", "--encoder-attention-heads", "4",
        "--decoder-attention-heads", "4", "--share-all-embeddings"]


def run(cmd, check=True):
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=REPO, timeout=300,
                       env=tool_env(PYTHONPATH=str(REPO)))
    if check:
        assert p.returncode == 0, f"{cmd[:3]} failed:\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
    return p


def train_flags(data, base, save, max_update) -> list:
    return [data, "--user-dir", REPO / "user_dir", "--task", "translation", "--arch", "lora_attn_bart_base", *DIMS,
            "--attn-bn", "4", "--finetune-from-model", base, "--optimizer", "adam", "--lr", "0.01", "--max-update",
            str(max_update), "--batch-size", "8", "--save-interval-updates", "2", "--no-epoch-checkpoints",
            "--disable-validation", "--save-dir", save, "--cpu", "--num-workers", "0", "--seed", "1"]


def train(data, base, save, max_update, check=True):
    return run([PY, "-m", "fairseq_cli.train", *train_flags(data, base, save, max_update)], check=check)


def updates(path) -> int:
    from unifairseq.fairseq.safe_globals import register_safe_globals

    register_safe_globals()
    return torch.load(path, map_location="cpu", weights_only=True)["optimizer_history"][-1]["num_updates"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """44 synthetic copy-task pairs, a tiny random BART base."""
    root = tmp_path_factory.mktemp("torn")
    raw = root / "raw"
    raw.mkdir()
    write_copy_task(raw, {"train": 44})
    data = root / "data-bin"
    run([PY, "-m", "fairseq_cli.preprocess", "--source-lang", "src", "--target-lang", "tgt", "--trainpref",
         raw / "train", "--destdir", data, "--joined-dictionary", "--workers", "1"])
    base = root / "base" / "model.pt"
    run([PY, "-m", "unifairseq.tools.make_tiny_bart", data, base, "--layers", "2", "--dim", "32", "--ffn-dim", "64",
         "--heads", "4", "--seed", "0"])
    return data, base


@pytest.mark.slow
def test_resume_over_a_torn_last_checkpoint(tiny, tmp_path):
    data, base = tiny
    save = tmp_path / "ckpt"
    train(data, base, save, 4)  # checkpoint_1_2.pt, checkpoint_1_4.pt, checkpoint_last.pt (= update 4)
    last = save / "checkpoint_last.pt"
    assert updates(last) == 4 and updates(save / "checkpoint_1_2.pt") == 2
    torn = last.read_bytes()[: last.stat().st_size // 2]  # killed halfway through fairseq's copy
    last.write_bytes(torn)
    p = train(data, base, save, 6)
    log = p.stdout + p.stderr
    notice = (f"unifairseq: {save}/checkpoint_last.pt ({len(torn):,} bytes) is unreadable (a torn copy?): moved to "
              "checkpoint_last.pt.torn; resuming from checkpoint_1_4.pt, the newest readable checkpoint in the folder")
    assert log.count(notice) == 1, log[-3000:]
    assert "(epoch 1 @ 4 updates)" in log  # fairseq's own "Loaded checkpoint ..." line: update 4, not 2 or 0
    assert (save / "checkpoint_last.pt.torn").read_bytes() == torn  # the user's bytes are kept as they were
    assert updates(last) == 6  # trained on from update 4 to --max-update 6
    assert not [n for n in os.listdir(save) if ".tmp" in n]


@pytest.mark.slow
def test_torn_last_checkpoint_without_a_fallback_is_one_line_and_untouched(tiny, tmp_path):
    data, base = tiny
    save = tmp_path / "ckpt"
    save.mkdir()
    (save / "checkpoint_last.pt").write_bytes(b"PK\x03\x04" + bytes(500))  # a zip cut short
    p = train(data, base, save, 2, check=False)
    assert p.returncode != 0
    line = (f"unifairseq: error: {save}/checkpoint_last.pt (504 bytes) is truncated or corrupt (a fairseq-train "
            f"killed while copying it?) and no other checkpoint in {save} is readable: restore it from a copy, or "
            "move it away to start again")
    assert line in p.stderr.splitlines(), p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    assert sorted(os.listdir(save)) == ["checkpoint_last.pt"]
    assert (save / "checkpoint_last.pt").read_bytes() == b"PK\x03\x04" + bytes(500)


def test_only_fairseq_train_repairs(tmp_path):
    """fairseq-generate and the hub build delta models from a checkpoint's saved arguments, whose save_dir is
    the training folder: outside fairseq-train nothing there is moved."""
    from unifairseq.fairseq.resume import in_fairseq_train, readable, repair_last_checkpoint

    assert not in_fairseq_train()
    (tmp_path / "checkpoint_last.pt").write_bytes(b"PK\x03\x04 torn")
    torch.save({"model": {}}, tmp_path / "checkpoint_1_2.pt")
    assert not readable(str(tmp_path / "checkpoint_last.pt")) and readable(str(tmp_path / "checkpoint_1_2.pt"))
    assert repair_last_checkpoint(Namespace(save_dir=str(tmp_path), restore_file="checkpoint_last.pt")) is None
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_1_2.pt", "checkpoint_last.pt"]


# fairseq logs only rank 0's INFO lines; to see where each rank resumed and stopped, each launched process runs
# fairseq-train's own entry point with load_checkpoint and save_checkpoint wrapped (in that test process only)
# to print its rank's update count and epoch.
EVERY_RANK_REPORTS = """
import sys
import fairseq.checkpoint_utils as cu
from fairseq_cli.train import cli_main
load, save = cu.load_checkpoint, cu.save_checkpoint
def load_checkpoint(cfg, trainer, **kw):
    extra, itr = load(cfg, trainer, **kw)
    print(f"rank {trainer.data_parallel_rank}: resumed at update {trainer.get_num_updates()}, epoch {itr.epoch}",
          flush=True)
    return extra, itr
def save_checkpoint(cfg, trainer, epoch_itr, val_loss):
    print(f"rank {trainer.data_parallel_rank}: saving at update {trainer.get_num_updates()}", flush=True)
    return save(cfg, trainer, epoch_itr, val_loss)
cu.load_checkpoint, cu.save_checkpoint = load_checkpoint, save_checkpoint
sys.argv = sys.argv[1:]
sys.exit(cli_main())
"""


def train_two_ranks(data, base, save, max_update):
    """fairseq-train on two CPU processes (gloo, one launched per rank); the two outputs, rank 0's first."""
    from socket import socket

    with socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(2):
        argv = [PY, "-c", EVERY_RANK_REPORTS, "fairseq-train", *train_flags(data, base, save, max_update),
                "--log-format", "simple", "--log-interval", "1",
                "--distributed-world-size", "2", "--distributed-rank", str(rank), "--distributed-backend", "gloo",
                "--distributed-init-method", f"tcp://127.0.0.1:{port}", "--distributed-no-spawn",
                "--ddp-backend", "legacy_ddp"]
        procs.append(subprocess.Popen([str(a) for a in argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True, cwd=REPO, env=tool_env(PYTHONPATH=str(REPO))))
    try:
        outs = [p.communicate(timeout=600)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs), "\n----\n".join(o[-3000:] for o in outs)
    return outs


@pytest.mark.slow
def test_resume_over_a_torn_last_checkpoint_on_two_ranks(tiny, tmp_path):
    """Both ranks go on from the newest readable checkpoint: rank 0 repairs and reads it, rank 1 gets its state
    from rank 0 (fairseq broadcasts it) and must take the same resume path (it looks for checkpoint_last.pt too)."""
    import re

    data, base = tiny
    save = tmp_path / "ckpt"
    # 44 pairs, batches of 8: 6 batches, 3 per rank -> an epoch is 3 updates; saves at updates 2 and 4, and at 3
    # (epoch 1's end, to checkpoint_last.pt only)
    outs = train_two_ranks(data, base, save, 4)
    for rank, out in enumerate(outs):
        assert f"rank {rank}: saving at update 4" in out
    last = save / "checkpoint_last.pt"
    assert updates(last) == 4 and updates(save / "checkpoint_2_4.pt") == 4 and updates(save / "checkpoint_1_2.pt") == 2
    torn = last.read_bytes()[: last.stat().st_size // 2]
    last.write_bytes(torn)
    outs = train_two_ranks(data, base, save, 6)
    both = "\n".join(outs)
    notice = (f"unifairseq: {save}/checkpoint_last.pt ({len(torn):,} bytes) is unreadable (a torn copy?): moved to "
              "checkpoint_last.pt.torn; resuming from checkpoint_2_4.pt, the newest readable checkpoint in the folder")
    assert both.count(notice) == 1 and notice in outs[0], both[-4000:]  # rank 0 repairs, once
    for rank, out in enumerate(outs):
        assert f"rank {rank}: resumed at update 4, epoch 2" in out, out[-3000:]
        assert re.findall(rf"rank {rank}: saving at update (\d+)", out) == ["6"], out[-3000:]  # epoch 2's end
    assert "(epoch 2 @ 4 updates)" in outs[0]  # fairseq's own "Loaded checkpoint ..." line
    # rank 0's per-update log (--log-interval 1): two updates, epoch 2's 2nd and 3rd batch of 3, 16 pairs each
    steps = re.findall(r"train_inner:epoch (\d+):\s+(\d+) / (\d+) .*?bsz=(\d+), num_updates=(\d+)", outs[0])
    assert steps == [("002", "2", "3", "16", "5"), ("002", "3", "3", "16", "6")], outs[0][-3000:]
    assert (save / "checkpoint_last.pt.torn").read_bytes() == torn
    assert updates(last) == 6
    assert not [n for n in os.listdir(save) if ".tmp" in n]
