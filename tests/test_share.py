"""Shared delta folders on a base fairseq loads itself: every method, both checkpoint styles, the
checks (base, dictionary, shape), nothing unpickled, bases found by name and by fingerprint, the hub."""
from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from fairseq import checkpoint_utils
from fairseq.tasks.translation import TranslationTask

from ckpthelp import no_unpickling_of, save_plain_base
from methods import IDS, METHODS
from tiny import TINY, full_logits, random_batch, tiny_args, tiny_dict
from trainhelp import TRAIN_FLAGS, make_trainer, toy_sample
from unifairseq.core import bases
from unifairseq.core.deltafile import CONFIG_NAME, ENTRY_NAME, TENSORS_NAME, read_delta
from unifairseq.fairseq.checkpoint_io import DeltaCheckpointError, load_checkpoint_file
from unifairseq.fairseq.ckpt_args import ARCH_PARENT
from unifairseq.tools.export import export_inference


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """No test sees the user's bases or cache."""
    monkeypatch.setenv("UNIFAIRSEQ_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("UNIFAIRSEQ_BASES", raising=False)
    monkeypatch.delenv("UNIFAIRSEQ_DELTA_BASE", raising=False)


def trained_delta(tmp_path, arch, flags, style="args", d=None, steps=2):
    """Train a delta a few fairseq Trainer updates on a saved base, write checkpoint_last.pt, export it."""
    d = d or tiny_dict()
    base = tmp_path / "bases" / "tiny.bart" / "model.pt"
    save_plain_base(base, arch, d, style)
    trainer, model = make_trainer(arch, flags, d)
    model.load_base(str(base))
    sample = toy_sample(d)
    for _ in range(steps):
        trainer.train_step([sample])
    ckpt = tmp_path / "checkpoint_last.pt"
    trainer.consolidate_optimizer()
    trainer.save_checkpoint(str(ckpt), {})
    out = tmp_path / "shared"
    export_inference(str(ckpt), str(out))
    return model.eval(), base, out, d


def overrides(folder, arch):
    return {"arch": arch, "_name": arch, "delta_file": str(folder)}


def load_on_base(base, folder, arch, d):
    task = TranslationTask(tiny_args(arch, TRAIN_FLAGS, dims=TINY), d, d)
    models, _, _ = checkpoint_utils.load_model_ensemble_and_task([str(base)], arg_overrides=overrides(folder, arch),
                                                                 task=task)
    return models[0].eval()


@pytest.mark.parametrize("name,arch,flags,identity", METHODS, ids=IDS)
def test_shared_delta_on_fairseq_loaded_base_gives_the_trained_model(name, arch, flags, identity, tmp_path):
    model, base, out, d = trained_delta(tmp_path, arch, flags)
    cfg, tensors = read_delta(str(out))
    assert cfg["arch"] == arch and cfg["parent_arch"] == ARCH_PARENT[arch]
    assert cfg["base"]["name"] == "tiny.bart" and cfg["base"]["fingerprint"] == model.base_content
    assert cfg["dictionary"]["source"] == model.dictionary_fingerprints["source"]
    assert cfg["tensors"]["parameters"] == sum(v.numel() for v in tensors.values())
    with no_unpickling_of(out) as seen:
        fresh = load_on_base(base, out, arch, d)
    assert seen == [os.path.realpath(base)], "only the base is unpickled, once"
    src, lens, prev, _ = random_batch(d)
    with torch.no_grad():
        assert torch.equal(full_logits(fresh, src, lens, prev), full_logits(model, src, lens, prev))
    base_sd = load_checkpoint_file(str(base))["model"]
    own = fresh.full_state_dict()
    untouched = [k for k in base_sd if not fresh.delta_plan.is_trainable(k) and not k.endswith("version")]
    assert untouched and all(torch.equal(own[k], base_sd[k]) for k in untouched)


@pytest.mark.parametrize("style", ["args", "cfg"])
def test_both_base_checkpoint_styles_take_the_overrides(style, tmp_path):
    arch, flags = "mam_bart_base", ["--attn-bn", "5", "--ffn-bn", "6", "--mid-dim", "16"]
    model, base, out, d = trained_delta(tmp_path, arch, flags, style=style)
    assert ("cfg" if load_checkpoint_file(str(base)).get("args") is None else "args") == style
    fresh = load_on_base(base, out, arch, d)
    assert type(fresh).__name__ == "DeltaBARTModel" and fresh.delta_plan.cfg.attn_mode == "prefix_nomlp"
    src, lens, prev, _ = random_batch(d)
    with torch.no_grad():
        assert torch.equal(full_logits(fresh, src, lens, prev), full_logits(model, src, lens, prev))


def test_other_base_refused_with_both_fingerprints_unless_allowed(tmp_path):
    arch, flags = "lora_attn_bart_base", ["--attn-bn", "4"]
    model, base, out, d = trained_delta(tmp_path, arch, flags)
    other = tmp_path / "other" / "model.pt"
    save_plain_base(other, arch, d, "args", seed=5)
    want, got = model.base_content, bases.content_fingerprint(load_checkpoint_file(str(other))["model"])
    with pytest.raises(DeltaCheckpointError) as e:
        load_on_base(other, out, arch, d)
    msg = str(e.value)
    assert "\n" not in msg and want[:16] in msg and got[:16] in msg and str(out) in msg
    task = TranslationTask(tiny_args(arch, TRAIN_FLAGS, dims=TINY), d, d)
    models, _, _ = checkpoint_utils.load_model_ensemble_and_task(
        [str(other)], arg_overrides={**overrides(out, arch), "delta_allow_base_mismatch": True}, task=task)
    _, tensors = read_delta(str(out))
    own = models[0].full_state_dict()
    assert all(torch.equal(own[k], v) for k, v in tensors.items())


def test_other_dictionary_refused(tmp_path):
    arch, flags = "lora_attn_bart_base", ["--attn-bn", "4"]
    model, base, out, d = trained_delta(tmp_path, arch, flags)
    d2 = tiny_dict()
    d2.symbols[d2.nspecial], d2.symbols[d2.nspecial + 1] = d2.symbols[d2.nspecial + 1], d2.symbols[d2.nspecial]
    with pytest.raises(DeltaCheckpointError, match="source dictionary .* is not the one the delta was trained with"):
        load_on_base(base, out, arch, d2)


def test_base_moved_and_renamed_is_found_by_fingerprint(tmp_path, monkeypatch):
    from unifairseq.fairseq.checkpoint_io import file_content_fingerprint

    arch, flags = "lora_attn_bart_base", ["--attn-bn", "4"]
    model, base, out, d = trained_delta(tmp_path, arch, flags)
    elsewhere = tmp_path / "B" / "bases"
    shutil.copytree(base.parent, elsewhere / "renamed")
    save_plain_base(elsewhere / "tiny.bart" / "model.pt", arch, d, "args", seed=7)  # same name, other weights
    shutil.rmtree(base.parent)
    monkeypatch.setenv("UNIFAIRSEQ_BASES", str(elsewhere))
    rec = read_delta(str(out))[0]["base"]
    calls = []

    def counted(p):
        calls.append(p)
        return file_content_fingerprint(p)

    found = bases.resolve(None, rec["name"], rec["fingerprint"], rec["path_hint"], counted)
    assert found.path == str(elsewhere / "renamed" / "model.pt") and "fingerprint" in found.how
    assert len(calls) == 2  # the same-named impostor and the renamed base
    again = bases.resolve(None, rec["name"], rec["fingerprint"], rec["path_hint"], counted)
    assert again.path == found.path and len(calls) == 2, "unchanged files are not reread (index)"
    index = json.loads((tmp_path / "cache" / bases.INDEX_NAME).read_text())
    entry = index[os.path.realpath(found.path)]
    assert entry["fingerprints"] == {"v2": rec["fingerprint"]} and rec["fingerprint"].startswith("v2:")
    assert entry["inode"] == os.stat(found.path).st_ino
    with pytest.raises(bases.BaseNotFound, match="unifairseq-base add"):
        bases.resolve("bart.large")


def test_name_search_order_flag_env_cache(tmp_path, monkeypatch):
    env_dir, cache = tmp_path / "env", tmp_path / "cache" / "bases"
    for root in (env_dir, cache):
        (root / "bart.large").mkdir(parents=True)
        (root / "bart.large" / "model.pt").write_bytes(b"x")
    (cache / "roberta.base").mkdir()
    (cache / "roberta.base" / "model.pt").write_bytes(b"y")
    monkeypatch.setenv("UNIFAIRSEQ_BASES", os.pathsep.join([str(tmp_path / "absent"), str(env_dir)]))
    assert bases.resolve("bart.large").path == str(env_dir / "bart.large" / "model.pt")
    assert bases.resolve("roberta.base").path == str(cache / "roberta.base" / "model.pt")
    assert bases.resolve(None, name="roberta.base").how.startswith("by name 'roberta.base' in the cache")
    explicit = tmp_path / "mine.pt"
    explicit.write_bytes(b"z")
    assert bases.resolve(str(explicit), name="bart.large").path == str(explicit)
    monkeypatch.delenv("UNIFAIRSEQ_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert bases.cache_dir() == str(tmp_path / "xdg" / "unifairseq")


def test_start_checkpoint_resolved_as_fairseq_does(tmp_path, monkeypatch):
    from argparse import Namespace

    from unifairseq.fairseq.models.common import start_checkpoint

    other = tmp_path / "other" / "checkpoint_last.pt"
    other.parent.mkdir()
    other.write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    save = tmp_path / "save"
    assert start_checkpoint(Namespace(restore_file=str(other), save_dir=str(save))) == str(other)
    fine = tmp_path / "base.pt"
    fine.write_bytes(b"x")
    args = Namespace(restore_file="checkpoint_last.pt", save_dir=str(save), finetune_from_model=str(fine))
    assert start_checkpoint(args) == str(fine)  # first launch: the model to fine-tune
    save.mkdir()
    (save / "checkpoint_last.pt").write_bytes(b"x")
    assert start_checkpoint(args) == str(save / "checkpoint_last.pt")  # relaunch: the run's own checkpoint


def test_tensor_file_is_safetensors_and_json_is_plain(tmp_path):
    model, base, out, d = trained_delta(tmp_path, "lora_attn_bart_base", ["--attn-bn", "4"])
    assert sorted(os.listdir(out)) == sorted([CONFIG_NAME, TENSORS_NAME, ENTRY_NAME])  # model.pt: the .pt delta, for --path
    raw = (out / TENSORS_NAME).read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    assert sorted(k for k in header if k != "__metadata__") == read_delta(str(out))[0]["tensors"]["names"]
    assert not raw.startswith(b"PK") and b"\x80\x02" not in raw[:2]  # neither a zip nor a pickle


def test_unifairseq_base_add_list_find(tmp_path, capsys):
    from unifairseq.tools.base import main

    d = tiny_dict()
    folder = tmp_path / "models" / "my-bart"
    save_plain_base(folder / "model.pt", "lora_attn_bart_base", d, "args")
    (folder / "dict.txt").write_text("w0 1\n")
    fp = bases.content_fingerprint(load_checkpoint_file(str(folder / "model.pt"))["model"])
    assert main(["add", str(folder), "--name", "tiny.bart"]) == 0
    linked = tmp_path / "cache" / "bases" / "tiny.bart"
    assert linked.is_symlink() and (linked / "dict.txt").is_file(), "the folder travels (dict.txt, BPE files)"
    assert fp[:16] in capsys.readouterr().out
    single = tmp_path / "loose.pt"
    shutil.copy2(folder / "model.pt", single)
    assert main(["add", str(single), "--name", "copied", "--copy"]) == 0
    copied = tmp_path / "cache" / "bases" / "copied" / "model.pt"
    assert not copied.is_symlink() and copied.read_bytes() == single.read_bytes()
    capsys.readouterr()
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith("  ") and fp[:16] in line]
    assert sorted(r[0] for r in rows) == ["copied", "tiny.bart"], out
    assert main(["find", "tiny.bart"]) == 0
    found = capsys.readouterr()
    assert found.out.strip() == str(linked / "model.pt") and "by name 'tiny.bart' in the cache" in found.err
    assert main(["add", str(folder), "--name", "tiny.bart"]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["find", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unifairseq-base add PATH --name nope" in err and len(err.strip().splitlines()) == 1


def test_delta_base_by_name_at_training_is_recorded(tmp_path, monkeypatch):
    d = tiny_dict()
    base = tmp_path / "bases" / "tiny.bart" / "model.pt"
    save_plain_base(base, "lora_attn_bart_base", d, "args")
    monkeypatch.setenv("UNIFAIRSEQ_BASES", str(tmp_path / "bases"))
    trainer, model = make_trainer("lora_attn_bart_base", ["--attn-bn", "4", "--delta-base", "tiny.bart"], d)
    assert model.base_path == str(base) and model.base_name == "tiny.bart"
    assert model.base_content == bases.content_fingerprint(load_checkpoint_file(str(base))["model"])
    info = json.loads(bytes(model.state_dict()["unifairseq_meta.info"].tolist()).decode())
    assert info["base_name"] == "tiny.bart" and info["base_content"] == model.base_content
    assert info["dictionary"] == {"source": model.dictionary_fingerprints["source"],
                                  "target": model.dictionary_fingerprints["target"]}
    with pytest.raises(DeltaCheckpointError, match="--delta-base: base 'bart.large' not found"):
        make_trainer("lora_attn_bart_base", ["--attn-bn", "4", "--delta-base", "bart.large"], d)


def test_old_pt_delta_without_info_exports_with_the_base_read(tmp_path, monkeypatch):
    """A .pt delta from before unifairseq_meta.info: the content fingerprint is computed from its base
    (the recorded path, else --base NAME_OR_PATH); without either the export says what to pass."""
    from fairseq.checkpoint_utils import torch_persistent_save

    from unifairseq.fairseq.checkpoint_io import INFO_KEY

    model, base, _, d = trained_delta(tmp_path, "lora_attn_bart_base", ["--attn-bn", "4"])
    state = load_checkpoint_file(str(tmp_path / "checkpoint_last.pt"))
    del state["model"][INFO_KEY]
    old = tmp_path / "old.pt"
    torch_persistent_save(state, str(old))
    # not recorded then: a folder must name its dictionary, so the export asks for the task's dict.txt
    with pytest.raises(DeltaCheckpointError, match=r"records no dictionary fingerprints .* --source-dict"):
        export_inference(str(old), str(tmp_path / "from_old"))
    d.save(str(tmp_path / "dict.txt"))
    dicts = {"source": str(tmp_path / "dict.txt")}
    export_inference(str(old), str(tmp_path / "from_old"), dicts=dicts)
    rec = read_delta(str(tmp_path / "from_old"))[0]
    assert rec["base"]["fingerprint"] == model.base_content and rec["base"]["name"] == "tiny.bart"
    assert rec["dictionary"] == model.dictionary_fingerprints  # source, and the same file as target
    moved = tmp_path / "moved" / "tiny.bart"
    shutil.move(str(base.parent), str(moved))
    with pytest.raises(DeltaCheckpointError, match="records no base content fingerprint .* pass --base NAME_OR_PATH"):
        export_inference(str(old), str(tmp_path / "again"), dicts=dicts)
    monkeypatch.setenv("UNIFAIRSEQ_BASES", str(moved.parent))
    export_inference(str(old), str(tmp_path / "again"), base="tiny.bart", dicts=dicts)
    assert read_delta(str(tmp_path / "again"))[0]["base"]["fingerprint"] == model.base_content


def test_merge_reads_the_delta_folder(tmp_path):
    """unifairseq-export merge DIR OUT: the same merged weights as from the .pt delta, a plain fairseq
    checkpoint (the base's args, the parent architecture) that gives the delta model's logits."""
    from unifairseq.tools.export import export_merge

    arch = "lora_attn_bart_base"
    model, base, out, d = trained_delta(tmp_path, arch, ["--attn-bn", "4"])
    export_merge(str(tmp_path / "checkpoint_last.pt"), str(tmp_path / "from_pt.pt"))
    with no_unpickling_of(out) as seen:
        export_merge(str(out), str(tmp_path / "from_dir.pt"))
    assert set(seen) == {os.path.realpath(base)}, "only the base is unpickled (for its args, then its weights)"
    a, b = (load_checkpoint_file(str(tmp_path / f))["model"] for f in ("from_pt.pt", "from_dir.pt"))
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    task = TranslationTask(tiny_args(arch, TRAIN_FLAGS, dims=TINY), d, d)
    models, _, _ = checkpoint_utils.load_model_ensemble_and_task([str(tmp_path / "from_dir.pt")], task=task)
    assert type(models[0]).__name__ == "BARTModel"
    src, lens, prev, _ = random_batch(d)
    with torch.no_grad():
        got, want = full_logits(models[0].eval(), src, lens, prev), full_logits(model, src, lens, prev)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    # an impostor under the recorded name is refused, naming both fingerprints
    impostor = tmp_path / "bases" / "tiny.bart" / "model.pt"
    save_plain_base(impostor, arch, d, "args", seed=9)
    with pytest.raises(DeltaCheckpointError, match=f"different base model.*{model.base_content[:16]}"):
        export_merge(str(out), str(tmp_path / "wrong.pt"))


def test_full_checkpoint_of_a_delta_model_keeps_its_recorded_base(tmp_path):
    """--delta-save-full writes BitFit's trained biases into a full checkpoint: loaded back, the base it
    records (name, content) is kept, not re-derived from tensors that changed in place."""
    d = tiny_dict()
    base = tmp_path / "bases" / "tiny.bart" / "model.pt"
    save_plain_base(base, "bitfit_bart_base", d, "args")
    trainer, model = make_trainer("bitfit_bart_base", ["--delta-save-full"], d)
    model.load_base(str(base))
    trainer.train_step([toy_sample(d)])
    full = model.state_dict()
    assert any(k.endswith(".bias") for k in full) and "encoder.embed_tokens.weight" in full
    _, fresh = make_trainer("bitfit_bart_base", ["--delta-save-full"], d)
    fresh.load_state_dict(full)
    assert fresh.base_content == model.base_content == bases.content_fingerprint(load_checkpoint_file(str(base))["model"])
    assert fresh.base_content != bases.content_fingerprint(full) and fresh.base_name == "tiny.bart"
