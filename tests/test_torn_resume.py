"""fairseq-train relaunched over a torn `checkpoint_last.pt` (fairseq copies it in place, not atomically):
the delta model's build moves it aside to `checkpoint_last.pt.torn` and resumes from the newest readable
checkpoint of the folder, with one notice line (unifairseq/fairseq/resume.py). Tiny BART, synthetic data."""
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


def train(data, base, save, max_update, check=True):
    return run([PY, "-m", "fairseq_cli.train", data, "--user-dir", REPO / "user_dir", "--task", "translation",
                "--arch", "lora_attn_bart_base", *DIMS, "--attn-bn", "4", "--finetune-from-model", base,
                "--optimizer", "adam", "--lr", "0.01", "--max-update", str(max_update), "--batch-size", "8",
                "--save-interval-updates", "2", "--no-epoch-checkpoints", "--disable-validation", "--save-dir", save,
                "--cpu", "--num-workers", "0", "--seed", "1"], check=check)


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
