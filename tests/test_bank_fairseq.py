"""(From branch wt-bank, where it was tests/test_bank_cli.py; renamed here because the run side owns that name.)
A bank through fairseq's own command lines: fairseq-train with --arch bank_bart_large and
--bank-deltas (two fresh presets) from a plain base, a bank checkpoint that holds only the deltas,
fairseq-generate from it (base read from the recorded path, the default delta for every line:
fairseq's translation task sends no delta_ids)."""
import subprocess
import sys

import pytest
import torch

from env import REPO, tool_env
from tiny import base_dims, dims

pytestmark = pytest.mark.slow
PY = sys.executable
DIMS = dims()


def sh(*cmd, cwd):
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=tool_env(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1"),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{cmd[:4]} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def test_fairseq_train_and_generate_with_a_bank(tmp_path):
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 48), ("valid", 8)):
        for side in ("src", "tgt"):
            lengths = torch.randint(3, 9, (n,), generator=g).tolist()
            lines = [" ".join(f"w{int(t)}" for t in torch.randint(0, 30, (k,), generator=g)) for k in lengths]
            (tmp_path / f"{split}.{side}").write_text("\n".join(lines) + "\n")
    sh(PY, "-m", "fairseq_cli.preprocess", "--source-lang", "src", "--target-lang", "tgt", "--joined-dictionary",
       "--trainpref", tmp_path / "train", "--validpref", tmp_path / "valid", "--destdir", tmp_path / "bin",
       "--workers", "1", cwd=tmp_path)
    sh(PY, "-m", "unifairseq.tools.tiny_base", "bart", tmp_path / "bin", tmp_path / "base.pt", "--source-lang", "src",
       "--target-lang", "tgt", *base_dims(), cwd=tmp_path)
    user_dir = REPO / "user_dir"
    log = sh(PY, "-m", "fairseq_cli.train", tmp_path / "bin", "--user-dir", user_dir, "--task", "translation",
             "--arch", "bank_bart_large", *DIMS, "--bank-deltas", "mt=lora_attn:attn_bn=4,sum=mam:attn_bn=3:ffn_bn=4:"
             "mid_dim=8", "--bank-default", "mt", "--finetune-from-model", tmp_path / "base.pt",
             "--optimizer", "adam", "--lr", "1e-3",
             "--max-update", "4", "--batch-size", "8", "--save-dir", tmp_path / "ckpt", "--no-epoch-checkpoints",
             "--cpu", "--num-workers", "0", "--log-format", "simple", "--log-interval", "1", "--disable-validation",
             cwd=tmp_path)
    assert "unifairseq bank: 2 deltas (mt, sum)" in log
    state = torch.load(tmp_path / "ckpt" / "checkpoint_last.pt", weights_only=False)
    keys = list(state["model"])
    assert keys and all(k.startswith("delta_bank.") or k.startswith("unifairseq_meta.") for k in keys)
    assert any(k.startswith("delta_bank.sum.encoder.delta_prefix.") for k in keys)
    fresh_lora = [k for k in keys if k.endswith("delta_lora.W_up.weight")]
    assert fresh_lora and any(state["model"][k].abs().sum() > 0 for k in fresh_lora), "LoRA did not train"
    out = sh(PY, "-m", "fairseq_cli.generate", tmp_path / "bin", "--user-dir", user_dir, "--path",
             tmp_path / "ckpt" / "checkpoint_last.pt", "--task", "translation", "--beam", "2", "--max-len-b", "5",
             "--batch-size", "8", "--cpu", "--gen-subset", "valid",
             "--model-overrides", "{'bank_default': 'mt'}", cwd=tmp_path)
    assert f"unifairseq: base model loaded from {tmp_path / 'base.pt'}" in out
    assert sum(line.startswith("H-") for line in out.splitlines()) == 8  # (one batch: fairseq-generate
    # translates only 4 of 8 with --batch-size 4 here, the plain base too)
