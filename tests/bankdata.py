"""What the delta-bank end-to-end tests share: tiny synthetic parallel data binarized by
fairseq-preprocess, a tiny plain BART base (unifairseq.tools.tiny_base), single deltas of
different methods trained on it by fairseq-train for a few updates (delta-only checkpoints), and
fairseq-generate's output read back per example."""
from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

from env import BIN, REPO, tool_env
from tiny import base_dims, dims, tiny_dict

# one layer per stack: the bank tests train several deltas through fairseq-train
DIMS = dims(layers=1)
# three methods at three sites: LoRA on W_q/W_v, a sequential FFN adapter, MAM (prefix + scaled PA)
METHODS = {"lora": ["--arch", "lora_attn_bart_large", "--attn-bn", "4"],
           "pfeiffer": ["--arch", "pfeiffer_bart_large", "--ffn-bn", "8"],
           "mam": ["--arch", "mam_bart_large", "--attn-bn", "4", "--ffn-bn", "8", "--mid-dim", "16"]}


def run(cmd, **kw):
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=REPO, env=tool_env(), **kw)
    assert p.returncode == 0, f"{cmd[:3]} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


def write_raw(raw: Path, seed: int, lines: dict, shift: int = 0):
    """Word sequences over the tiny dictionary; the target is the source reversed and shifted by `shift`
    words, so that two tasks ask different things of the same base."""
    rng = random.Random(seed)
    raw.mkdir(parents=True, exist_ok=True)
    for split, n in lines.items():
        src, tgt = [], []
        for _ in range(n):
            words = [rng.randrange(40) for _ in range(rng.randint(3, 9))]
            src.append(" ".join(f"w{w}" for w in words))
            tgt.append(" ".join(f"w{(w + shift) % 40}" for w in reversed(words)))
        (raw / f"{split}.src").write_text("\n".join(src) + "\n")
        (raw / f"{split}.tgt").write_text("\n".join(tgt) + "\n")


def binarize(raw: Path, out: Path, dict_txt: Path, splits=("train", "valid", "test")):
    prefs = []
    for s in splits:
        prefs += [f"--{s}pref", raw / s]
    run([BIN / "fairseq-preprocess", "--source-lang", "src", "--target-lang", "tgt", *prefs, "--destdir", out,
         "--srcdict", dict_txt, "--tgtdict", dict_txt, "--workers", "1"])
    return out


def make_dict(path: Path) -> Path:
    tiny_dict().save(str(path))
    return path


def make_base(data: Path, out: Path) -> Path:
    run([sys.executable, "-m", "unifairseq.tools.tiny_base", "bart", data, out, "--source-lang", "src",
         "--target-lang", "tgt", *base_dims(layers=1)])
    return out


def train_delta(data: Path, base: Path, method: str, save: Path, updates: int = 4, lr: float = 0.05,
                seed: int = 1) -> Path:
    """A single delta on the base: fairseq-train's delta-only checkpoint_last.pt."""
    run([BIN / "fairseq-train", data, "--user-dir", REPO / "user_dir", "--task", "translation",
         "--source-lang", "src", "--target-lang", "tgt", *METHODS[method], *DIMS,
         "--finetune-from-model", base, "--criterion", "cross_entropy", "--optimizer", "adam", "--lr", str(lr),
         "--dropout", "0", "--attention-dropout", "0", "--max-update", str(updates), "--batch-size", "8",
         "--required-batch-size-multiple", "1", "--no-epoch-checkpoints", "--save-dir", save, "--cpu",
         "--num-workers", "0", "--seed", str(seed), "--log-format", "json", "--no-progress-bar",
         "--disable-validation"])
    return save / "checkpoint_last.pt"


def build_bank_checkpoint(data: Path, base: Path, deltas: dict, out: Path) -> Path:
    """The bank of the delta files {name: file} over `base`: `python -m unifairseq.tools.bank_cli build`."""
    run([sys.executable, "-m", "unifairseq.tools.bank_cli", "build", out, *[f"{n}={p}" for n, p in deltas.items()],
         "--base", base, "--data", data])
    return out


# fairseq-generate on a bank or a single delta: each line's hypothesis and source, by example id
GEN = ["--beam", "3", "--max-len-b", "10", "--required-batch-size-multiple", "1", "--cpu", "--num-workers", "0"]


def generate(data, path, *extra, task=()):
    out = run([BIN / "fairseq-generate", data, "--user-dir", REPO / "user_dir", "--path", path, "--gen-subset", "test",
               *task, *GEN, *extra]).stdout
    return fields("H-", out), fields("S-", out)


def fields(prefix, text):
    return {int(l.split("\t")[0][len(prefix):]): l.split("\t")[1:] for l in text.splitlines() if l.startswith(prefix)}


BANK_TASK = ["--task", "delta_bank", "--source-lang", "src", "--target-lang", "tgt"]
