"""Shared delta folders (`unifairseq-export inference CKPT DIR`) in a bank: the same numbers as the
bank of the same deltas' .pt files, nothing unpickled, a base mismatch refused naming both sides."""
import json
import pickle

import pytest
import torch

from bankhelp import make_bank, mixed_batch, plain_base, single, spec
from ckpthelp import save_delta_file
from tiny import tiny_model
from unifairseq.core.bank import BankError

NAMES = ["lora_attn", "mam", "bitfit"]  # LoRA, MAM (its prefix MLP folded in the folder), BitFit


@pytest.fixture(scope="module")
def deltas(tmp_path_factory):
    from fairseq.checkpoint_utils import torch_persistent_save

    from unifairseq.tools.export import export_inference
    from unifairseq.tools.tiny_base import checkpoint_state

    d = tmp_path_factory.mktemp("folders")
    base, _ = plain_base()
    plain, _, pargs = tiny_model("bart_base")
    plain.load_state_dict(base)
    torch_persistent_save(checkpoint_state(plain, pargs), str(d / "base.pt"))
    for i, n in enumerate(NAMES):
        m, _ = single(n, seed=30 + i)
        _, _, args = tiny_model(*spec(n))
        save_delta_file(m, args, d / f"{n}.pt")
        export_inference(str(d / f"{n}.pt"), str(d / n), base=str(d / "base.pt"))
    return d


def test_folder_bank_equals_pt_bank_and_unpickles_nothing(deltas, monkeypatch):
    from_pt, _ = make_bank([])
    for n in NAMES:
        from_pt.bank.add(n, str(deltas / f"{n}.pt"))
    folded = json.loads((deltas / "mam" / "delta_config.json").read_text())["delta"]
    assert folded["attn_mode"] == "prefix_nomlp"  # the folder really holds the folded prefix

    def no_pickle(*a, **k):
        raise AssertionError("a delta folder was unpickled")

    from_dir, _ = make_bank([])
    with monkeypatch.context() as mp:
        for mod, attr in ((torch, "load"), (pickle, "load"), (pickle, "loads"), (pickle, "Unpickler")):
            mp.setattr(mod, attr, no_pickle)
        for n in NAMES:
            from_dir.bank.add(n, str(deltas / n))
    from_pt.eval(), from_dir.eval()
    _, src, lens, prev, _, _ = mixed_batch(5)
    ids = torch.tensor([2, 0, 1, 1, -1])
    with torch.no_grad():
        a, _ = from_pt(src, lens, prev, delta_ids=ids)
        b, _ = from_dir(src, lens, prev, delta_ids=ids)
    assert torch.equal(a, b)  # bitwise: the folded prefix is the vectors the MLP computes at inference
    for n in NAMES:
        own = from_dir.bank.delta_state(n)
        assert sorted(own) == sorted(from_pt.bank.delta_state(n)) or n == "mam", n


def test_folder_of_another_base_is_refused_with_both_fingerprints(deltas, tmp_path):
    import shutil

    from deltahelp import resign

    bad = tmp_path / "lora"
    shutil.copytree(deltas / "lora_attn", bad)
    # the JSON's base record (the tensor checksum is unaffected), with the digest recomputed as an editor would
    resign(bad, lambda cfg: cfg["base"].update(plan_fingerprint="ab" * 32))
    bank, _ = make_bank([])
    with pytest.raises(BankError, match=r"trained on another base: it records base fingerprint abababab.*"
                                         r"this bank's base has [0-9a-f]{16}"):
        bank.bank.add("lora", str(bad))
    assert bank.bank.names == []
    # added before the base is loaded (fairseq-train --finetune-from-model): the same check, once it is in
    bank.bank.add("lora", str(bad), after_base=True)
    with pytest.raises(BankError, match=r"trained on another base: it records base fingerprint abababab"):
        bank.bank.load_pending()
    bank.bank.remove("lora")
    (bad / "delta_model.safetensors").write_bytes(b"\0" * 12)
    with pytest.raises(BankError, match="delta_model.safetensors: truncated or not this delta's: 12 bytes"):
        bank.bank.add("lora", str(bad))


def test_bank_build_tool_and_bank_deltas_flag_take_folders(deltas, tmp_path):
    """`python -m unifairseq.tools.bank_cli build OUT name=FOLDER ...` writes each folder's tensors."""
    from tiny import tiny_dict
    from unifairseq.fairseq.checkpoint_io import load_checkpoint_file
    from unifairseq.tools.bank_cli import main

    for lang in ("src", "tgt"):
        tiny_dict().save(str(tmp_path / f"dict.{lang}.txt"))
    out = tmp_path / "bank.pt"
    assert main(["build", str(out), *[f"{n}={deltas / n}" for n in NAMES], "--base", str(deltas / "base.pt"),
                 "--data", str(tmp_path), "--source-lang", "src", "--target-lang", "tgt"]) == 0
    ref, _ = make_bank([])
    for n in NAMES:
        ref.bank.add(n, str(deltas / n))
    sd = load_checkpoint_file(str(out))["model"]
    for n in NAMES:
        own = ref.bank.delta_state(n)
        assert all(torch.equal(sd[f"delta_bank.{n}.{k}"], v) for k, v in own.items()), n
        assert not [k for k in sd if k.startswith(f"delta_bank.{n}.") and k[len(f"delta_bank.{n}."):] not in own]
    # --bank-deltas reads folders too; on a model that has no base loaded yet (nothing to start from) the
    # check runs against its random weights and refuses (with a start checkpoint it waits: test_bank_resume).
    # Another seed than the deltas' base (seed 0): with the same seed its random weights would be that base
    with pytest.raises(BankError, match=r"'lora_attn' \(.*lora_attn\) was trained on another base"):
        tiny_model("bank_bart_base", ["--bank-deltas", ",".join(f"{n}={deltas / n}" for n in NAMES)], seed=11)
