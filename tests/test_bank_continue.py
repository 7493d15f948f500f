"""Existing deltas continued as a bank from a base with fairseq-train (the file deltas wait for the base
that fairseq loads after building the model), and each delta of the trained bank extracted as a
single-delta checkpoint that fairseq-generate decodes alone exactly as the bank decodes with it."""
from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
import torch

from bankdata import BANK_TASK, BIN, DIMS, REPO, binarize, generate, make_base, make_dict, run, train_delta, write_raw
from unifairseq.fairseq.checkpoint_io import META_KEYS, load_checkpoint_file

TRAIN = ["--criterion", "cross_entropy", "--optimizer", "adam", "--dropout", "0", "--batch-size", "8",
         "--required-batch-size-multiple", "1", "--no-epoch-checkpoints", "--cpu", "--num-workers", "0",
         "--seed", "1", "--log-format", "json", "--no-progress-bar", "--disable-validation"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A base, a LoRA delta (.pt) and a MAM delta exported as a shared folder (its prefix folded)."""
    from unifairseq.tools.export import export_inference

    w = tmp_path_factory.mktemp("bank_continue")
    dic = make_dict(w / "dict.txt")
    write_raw(w / "raw_a", 0, {"train": 16, "valid": 4, "test": 8})
    write_raw(w / "raw_b", 1, {"train": 16, "valid": 4, "test": 8}, shift=7)
    a, b = binarize(w / "raw_a", w / "a-bin", dic), binarize(w / "raw_b", w / "b-bin", dic)
    base = make_base(a, w / "base.pt")
    lora = train_delta(a, base, "lora", w / "lora")
    export_inference(str(train_delta(b, base, "mam", w / "mam")), str(w / "mam_dir"))
    return SimpleNamespace(w=w, a=a, b=b, base=base, lora=lora, mam=w / "mam_dir")


def train_bank(f, save, lr, updates):
    run([BIN / "fairseq-train", f.a, "--user-dir", REPO / "user_dir", "--task", "delta_bank", "--bank-tasks",
         f"lora:{f.a},mam:{f.b}", "--source-lang", "src", "--target-lang", "tgt", "--arch", "bank_bart_large",
         "--bank-deltas", f"lora={f.lora},mam={f.mam}", *DIMS, "--finetune-from-model", f.base, "--lr", str(lr),
         "--max-update", str(updates), "--save-dir", save, *TRAIN])
    return {k: v for k, v in load_checkpoint_file(str(save / "checkpoint_last.pt"))["model"].items()
            if k not in META_KEYS}


def own_tensors(f):
    from unifairseq.fairseq.bank import read_delta

    return {n: read_delta(str(src))[1] for n, src in (("lora", f.lora), ("mam", f.mam))}


@pytest.mark.slow
def test_file_deltas_continue_from_the_base_and_extract_alone(files):
    f = files
    own = own_tensors(f)
    # lr 0: the bank starts from exactly the files' tensors (on the base fairseq loaded, which they match)
    start = train_bank(f, f.w / "lr0", 0.0, 1)
    for n, tensors in own.items():
        assert tensors and all(torch.equal(start[f"delta_bank.{n}.{k}"], v) for k, v in tensors.items()), n
    # a real continuation: both deltas move, from their files' values
    sd = train_bank(f, f.w / "ckpt", 0.05, 3)
    for n, tensors in own.items():
        assert any(not torch.equal(sd[f"delta_bank.{n}.{k}"], v) for k, v in tensors.items()), f"{n} did not move"
    bank = f.w / "ckpt" / "checkpoint_last.pt"
    other, _ = generate(f.a, bank, "--default-delta", "mam", "--batch-size", "3", task=BANK_TASK)
    lora_a = None
    for n, data in (("lora", f.a), ("mam", f.b)):
        out = f.w / f"{n}_alone.pt"
        run([sys.executable, "-m", "unifairseq.tools.bank_cli", "extract", bank, n, out])
        single = load_checkpoint_file(str(out))
        assert single["args"].arch == "delta_bart_large"
        assert all(torch.equal(single["model"][k], sd[f"delta_bank.{n}.{k}"])
                   for k in single["model"] if k not in META_KEYS)
        alone_h, _ = generate(data, out, "--batch-size", "4")
        bank_h, _ = generate(data, bank, "--default-delta", n, "--batch-size", "3", task=BANK_TASK)
        assert sorted(alone_h) == sorted(bank_h) == list(range(8))
        for i in range(8):
            assert bank_h[i][1] == alone_h[i][1], (n, i, bank_h[i], alone_h[i])
            assert abs(float(bank_h[i][0]) - float(alone_h[i][0])) < 1e-5, (n, i)
        lora_a = lora_a or bank_h
        # and as a shared folder (unifairseq-export inference), on the base fairseq-generate loads
        folder = f.w / f"{n}_shared"
        run([sys.executable, "-m", "unifairseq.tools.export_cli", "inference", out, folder])
        overrides = str({"arch": "delta_bart_large", "_name": "delta_bart_large", "delta_file": str(folder)})
        shared_h, _ = generate(data, f.base, "--model-overrides", overrides, "--batch-size", "4")
        assert all(shared_h[i][1] == alone_h[i][1] and abs(float(shared_h[i][0]) - float(alone_h[i][0])) < 1e-5
                   for i in range(8)), n
    # the two deltas decode the same lines differently, so a bank that ignored the choice would fail above
    assert sum(other[i] != lora_a[i] for i in range(8)) >= 4
