"""One base lookup for every tool (unifairseq.fairseq.checkpoint_io.find_base over core/bases.resolve):
names validated, errors that say what was tried, damaged cache entries skipped, a read-only cache,
an atomic `unifairseq-base add`, and the same answer from export merge/hf, bank build, the hub and
fairseq's own loading of a delta folder's entry file (--path DIR/model.pt)."""
from __future__ import annotations

import logging
import os
import stat

import pytest
import torch
from fairseq import checkpoint_utils
from fairseq.models import build_model
from fairseq.tasks.translation import TranslationTask

import unifairseq.fairseq
from tiny import tiny_args, tiny_dict, tiny_model
from unifairseq.core import bases
from unifairseq.fairseq.checkpoint_io import DeltaCheckpointError, find_base
from unifairseq.tools import base as base_tool
from unifairseq.tools.export import export_inference, export_merge
from unifairseq.tools.tiny_base import checkpoint_state

ARCH = "lora_attn_bart_large"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("UNIFAIRSEQ_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("UNIFAIRSEQ_BASES", raising=False)
    monkeypatch.delenv("UNIFAIRSEQ_DELTA_BASE", raising=False)
    unifairseq.fairseq.register()


def save_base(path, d, seed=0):
    args = tiny_args("bart_large")
    torch.manual_seed(seed)
    plain = build_model(args, TranslationTask(args, d, d))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    checkpoint_utils.torch_persistent_save(checkpoint_state(plain, args), str(path))
    return str(path)


@pytest.fixture
def delta(tmp_path):
    """(base file, delta .pt, delta folder, dictionary, task): a LoRA delta on a tiny BART base in
    tmp_path/bases/tiny.bart/model.pt, its LoRA B made non-zero so that a merge changes the weights."""
    d = tiny_dict()
    base = save_base(tmp_path / "bases" / "tiny.bart" / "model.pt", d)
    model, task, args = tiny_model(ARCH, (), d)
    model.load_base(base)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.normal_(0, 0.05)
    pt = str(tmp_path / "delta.pt")
    checkpoint_utils.torch_persistent_save(checkpoint_state(model, args), pt)
    folder = str(tmp_path / "shared")
    export_inference(pt, folder)
    return base, pt, folder, d, task


def move_base(tmp_path, base, new_name="moved"):
    """The base folder renamed under a folder on $UNIFAIRSEQ_BASES: only its fingerprint finds it."""
    new = tmp_path / "bases" / new_name
    os.rename(os.path.dirname(base), new)
    return str(new / "model.pt")


# --------------------------------------------------------------- names
@pytest.mark.parametrize("name", ["../../evil_raw", "/abs/path", "a/b", ".", "..", "...", ".hidden", "bad\nname",
                                  "tab\tname", "", "sp ace", "é"])
def test_bad_base_names_are_refused(name):
    assert not bases.valid_name(name)
    with pytest.raises(bases.BadBaseName):
        bases.check_name(name)


@pytest.mark.parametrize("name", ["bart.large", "mbart.large.cc25", "roberta_base-2", "x", "_x", "-x"])
def test_good_base_names(name):
    assert bases.check_name(name) == name


def test_a_recorded_name_never_leaves_the_search_folders(tmp_path, delta):
    """A stranger's record naming ../../x is skipped and said so, not looked up outside the cache."""
    base, *_ = delta
    evil = tmp_path / "evil_raw"
    evil.mkdir()
    os.symlink(base, evil / "model.pt")
    os.makedirs(tmp_path / "cache" / "bases", exist_ok=True)
    with pytest.raises(bases.BaseNotFound, match="not a valid base name, skipped"):
        find_base(None, "../../evil_raw")
    with pytest.raises(bases.BadBaseName):  # given as a flag it is neither a file nor a name
        bases.resolve("..")


def test_not_found_names_what_was_tried(tmp_path, monkeypatch):
    monkeypatch.setenv("UNIFAIRSEQ_BASES", str(tmp_path / "mine"))
    with pytest.raises(bases.BaseNotFound) as e:
        find_base(None, "bart.large", "f" * 64, str(tmp_path / "gone" / "model.pt"))
    msg = str(e.value)
    assert "\n" not in msg
    for part in ("name 'bart.large'", str(tmp_path / "mine" / "bart.large" / "model.pt"),
                 str(tmp_path / "cache" / "bases" / "bart.large" / "model.pt"),
                 f"the recorded path {tmp_path / 'gone' / 'model.pt'} (not there)", "fingerprint ffffffffffff",
                 "unifairseq-base add PATH --name bart.large"):
        assert part in msg, (part, msg)


# --------------------------------------------------------------- one lookup, every tool
def test_export_merge_and_hf_find_a_moved_base_as_generate_does(tmp_path, delta, monkeypatch):
    base, pt, folder, d, task = delta
    moved = move_base(tmp_path, base)
    monkeypatch.setenv("UNIFAIRSEQ_BASES", str(tmp_path / "bases"))
    found = find_base(None, "tiny.bart", bases.content_fingerprint(torch.load(moved, weights_only=True)["model"]),
                      base)
    assert found.path == moved and "fingerprint" in found.how
    export_merge(pt, str(tmp_path / "merged.pt"))  # was: "the base ... recorded in ... is not there"
    merged = torch.load(tmp_path / "merged.pt", weights_only=True)["model"]
    plain = torch.load(moved, weights_only=True)["model"]
    key = "encoder.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged[key], plain[key])  # the LoRA was merged into the moved base's weights
    pytest.importorskip("transformers")
    from unifairseq.tools.export_hf import export_hf

    export_hf(pt, str(tmp_path / "hf"), base_only=True)
    assert os.path.isdir(tmp_path / "hf")


def test_merge_base_nonexistent_message(tmp_path, delta, capsys):
    _, pt, *_ = delta
    from unifairseq.tools.export_cli import main

    assert main(["merge", pt, str(tmp_path / "m.pt"), "--base", "nonexistent"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "base 'nonexistent' not found" in err[0] and "recorded in" not in err[0]
    assert "name 'nonexistent' at" in err[0] and "--base PATH" in err[0]


def test_bank_build_and_extract_take_a_base_name(tmp_path, delta, monkeypatch):
    base, pt, folder, d, task = delta
    from unifairseq.core.bank import BankError
    from unifairseq.fairseq.checkpoint_io import DeltaCheckpointError
    from unifairseq.tools.bank_build import load_bank_checkpoint
    from unifairseq.fairseq.tasks.bank import BankTaskError
    from unifairseq.tools.bank_build import build_bank_checkpoint

    data = tmp_path / "data"
    data.mkdir()
    for lang in ("en", "ro"):
        d.save(str(data / f"dict.{lang}.txt"))
    monkeypatch.setenv("UNIFAIRSEQ_BASES", str(tmp_path / "bases"))
    bank = str(tmp_path / "bank.pt")
    assert build_bank_checkpoint("tiny.bart", {"a": pt}, str(data), bank, "en", "ro") == ["a"]
    with pytest.raises(BankTaskError, match="base 'nope' not found; tried name 'nope'"):
        build_bank_checkpoint("nope", {"a": pt}, str(data), str(tmp_path / "b2.pt"), "en", "ro")
    moved = move_base(tmp_path, base)  # the path the bank records is gone: a name finds it
    model, _ = load_bank_checkpoint(bank, str(data), "moved")
    assert model.bank.base_path == moved
    with pytest.raises(BankError, match="base 'nope' not found; tried name 'nope'"):
        load_bank_checkpoint(bank, str(data), "nope")
    # nothing given: a bank checkpoint records its base's name and content as any delta checkpoint does, and the
    # model's own lookup finds the renamed base by that fingerprint
    model, _ = load_bank_checkpoint(bank, str(data))
    assert model.bank.base_path == moved
    os.rename(moved, moved + ".gone")
    with pytest.raises(DeltaCheckpointError, match=f"trained on the base {base!r}, which is not there.*the "
                                                   f"recorded path {base} \\(not there\\)"):
        load_bank_checkpoint(bank, str(data))  # the lookup says what it tried


def _entry_and_folder_models(folder, task, **overrides):
    """fairseq's own loading of what --path feeds: DIR/model.pt, and the base with the folder as overrides."""
    from unifairseq.core.deltafile import read_config

    (m,), _ = checkpoint_utils.load_model_ensemble([os.path.join(folder, "model.pt")], task=task,
                                                    arg_overrides=overrides or None)
    arch = read_config(folder)["arch"]
    base = find_base(None, "tiny.bart", read_config(folder)["base"]["fingerprint"]).path
    (f,), _ = checkpoint_utils.load_model_ensemble(
        [base], task=task, arg_overrides=dict(arch=arch, _name=arch, delta_file=folder))
    return m, f


def test_entry_file_as_path_finds_its_moved_base(tmp_path, delta, monkeypatch):
    """--path DIR/model.pt (no command substitution): the .pt delta in the folder, its base found inside
    the model after the base folder moved; the same weights as the folder put on the base by overrides."""
    base, pt, folder, d, task = delta
    moved = move_base(tmp_path, base)
    monkeypatch.setenv("UNIFAIRSEQ_BASES", str(tmp_path / "bases"))
    m, f = _entry_and_folder_models(folder, task)
    assert m.base_path == moved and m.base_name == "tiny.bart"
    assert f.delta_file == os.path.abspath(folder)
    ref, _, _ = tiny_model(ARCH, (), d)
    ref.load_state_dict(torch.load(pt, weights_only=True)["model"])  # the .pt delta on its (moved) base
    for k, v in ref.full_state_dict().items():
        assert torch.equal(m.full_state_dict()[k], v), k
        assert torch.equal(f.full_state_dict()[k], v), k


def test_entry_file_is_the_pt_export(tmp_path, delta):
    """DIR/model.pt holds what `export inference CKPT X.pt` writes; the JSON records its sha256 and size."""
    import hashlib
    import json

    base, pt, folder, d, task = delta
    export_inference(pt, str(tmp_path / "x.pt"))
    want = torch.load(str(tmp_path / "x.pt"), weights_only=True)
    entry = os.path.join(folder, "model.pt")
    got = torch.load(entry, weights_only=True)
    assert sorted(got) == sorted(want) and sorted(got["model"]) == sorted(want["model"])
    for k, v in want["model"].items():
        assert torch.equal(got["model"][k], v), k
    cfg = json.load(open(os.path.join(folder, "delta_config.json")))
    assert cfg["entry"] == {"file": "model.pt", "sha256": hashlib.sha256(open(entry, "rb").read()).hexdigest(),
                            "bytes": os.path.getsize(entry)}


def test_entry_file_other_base_by_override(tmp_path, delta):
    """--model-overrides "{'delta_base': PATH}" names the base for the entry file as for any .pt delta."""
    base, pt, folder, d, task = delta
    other = str(tmp_path / "elsewhere" / "model.pt")
    os.makedirs(os.path.dirname(other))
    os.rename(base, other)
    (m,), _ = checkpoint_utils.load_model_ensemble([os.path.join(folder, "model.pt")], task=task,
                                                    arg_overrides={"delta_base": other})
    assert m.base_path == other


def test_entry_file_without_its_base_is_one_line(tmp_path, delta):
    base, pt, folder, d, task = delta
    os.remove(base)
    with pytest.raises(DeltaCheckpointError, match="base 'tiny.bart' not found; tried name 'tiny.bart'"):
        checkpoint_utils.load_model_ensemble([os.path.join(folder, "model.pt")], task=task)


def test_an_altered_entry_file_is_refused_by_the_folder_reader(tmp_path, delta):
    from unifairseq.core.deltafile import DeltaFileError, read_config, read_delta

    base, pt, folder, d, task = delta
    entry = os.path.join(folder, "model.pt")
    with open(entry, "ab") as f:
        f.write(b"\0")
    for reader in (read_config, read_delta):
        with pytest.raises(DeltaFileError) as e:
            reader(folder)
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith(f"{entry}: checksum mismatch (sha256 ")
        assert msg.endswith("not the entry file exported with this delta; re-copy the folder")
    os.remove(entry)
    with pytest.raises(DeltaFileError, match="model.pt: missing: delta_config.json records it"):
        read_config(folder)


def test_an_entry_whose_tensors_differ_is_refused_by_find(tmp_path, delta, capsys):
    """A folder made by hand: model.pt with other tensors, its sha256 recorded in the JSON. The sha256
    binds the two files as written, so the pickle-free folder reader cannot see it (it accepts the folder
    and serves the safetensors); `unifairseq-base find DIR` reads model.pt weights-only and refuses."""
    import hashlib

    from unifairseq.core.deltafile import read_delta

    base, pt, folder, d, task = delta
    entry = os.path.join(folder, "model.pt")
    state = torch.load(entry, weights_only=True)
    name = next(k for k in state["model"] if "lora" in k)
    state["model"][name] = state["model"][name] + 1
    torch.save(state, entry)
    from deltahelp import resign

    resign(folder, lambda cfg: cfg["entry"].update(sha256=hashlib.sha256(open(entry, "rb").read()).hexdigest(),
                                                   bytes=os.path.getsize(entry)))
    read_delta(folder)  # consistent digests: accepted
    assert base_tool.main(["find", folder]) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.strip() == (
        f"unifairseq-base: error: {entry}: tensor {name} differs from the one in delta_model.safetensors; the "
        "folder's two files disagree: re-export it, or load it without the entry (the hub, or --model-overrides "
        "with delta_file)")


def test_export_refuses_a_folder_holding_another_model_pt(tmp_path, delta):
    from unifairseq.core.deltafile import DeltaFileError

    base, pt, folder, d, task = delta
    before = open(base, "rb").read()
    with pytest.raises(DeltaFileError, match="holds a model.pt that is not a delta folder's entry"):
        export_inference(pt, os.path.dirname(base), force=True)  # a base folder: never overwritten
    assert open(base, "rb").read() == before


def test_hub_and_share_reader_use_the_same_lookup(tmp_path, delta, monkeypatch):
    base, pt, folder, d, task = delta
    moved = move_base(tmp_path, base)
    monkeypatch.setenv("UNIFAIRSEQ_BASES", str(tmp_path / "bases"))
    from unifairseq.fairseq.deltafolder import hub_arguments
    from unifairseq.tools.share import read_input

    where = hub_arguments(None, "model.pt", ".", folder, {})
    assert os.path.join(where[0], where[1]) == moved
    with pytest.raises(bases.BaseNotFound, match="tried name 'nope'"):
        hub_arguments("nope", "model.pt", ".", None, {})
    state = read_input(folder, None, with_base_args=True)
    assert state["args"].arch == ARCH


# --------------------------------------------------------------- the cache
def test_add_refuses_a_non_checkpoint_and_leaves_nothing(tmp_path, delta, capsys):
    base, *_ = delta
    junk = tmp_path / "notckpt.pt"
    junk.write_bytes(b"not a checkpoint at all")
    assert base_tool.main(["add", str(junk), "--name", "junk"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "notckpt.pt" in err[0]
    root = tmp_path / "cache" / "bases"
    assert not root.exists() or os.listdir(root) == []
    assert base_tool.main(["add", base, "--name", "../../evil_raw"]) == 2
    assert "not a base name" in capsys.readouterr().err
    assert base_tool.main(["add", base, "--name", "tiny"]) == 0
    assert os.listdir(root) == ["tiny"]  # no temporary entry left beside it
    assert find_base("tiny").path == str(root / "tiny" / "model.pt")


def test_add_refuses_a_delta(tmp_path, delta, capsys):
    _, pt, *_ = delta
    assert base_tool.main(["add", pt, "--name", "d"]) == 2
    assert "is a delta" in capsys.readouterr().err
    assert not (tmp_path / "cache" / "bases" / "d").exists()


def test_a_damaged_entry_is_warned_and_skipped(tmp_path, delta, monkeypatch, caplog, capsys):
    base, pt, folder, d, task = delta
    moved = move_base(tmp_path, base)
    root = tmp_path / "bases"
    (root / "aaa.broken").mkdir(parents=True)  # scanned before "moved"
    (root / "aaa.broken" / "model.pt").write_bytes(b"garbage")
    monkeypatch.setenv("UNIFAIRSEQ_BASES", str(tmp_path / "bases"))
    with caplog.at_level(logging.WARNING, logger="unifairseq.bases"):
        assert base_tool.main(["find", folder]) == 0
    out = capsys.readouterr()
    assert out.out.strip() == moved
    warned = [r.getMessage() for r in caplog.records if "aaa.broken" in r.getMessage()]
    assert len(warned) == 1 and "\n" not in warned[0] and "skipping" in warned[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="unifairseq.bases"):
        assert base_tool.main(["list"]) == 0
    listed = capsys.readouterr().out
    assert "aaa.broken" in listed and "(unreadable)" in listed and moved in listed  # the rest still listed


def test_read_only_cache_still_answers(tmp_path, delta, monkeypatch, capsys):
    """The index cannot be written: the cache is read-only (for a non-root user) and the index's place
    is taken by a folder (which stops root too). The lookup by fingerprint still answers."""
    base, pt, folder, d, task = delta
    moved = move_base(tmp_path, base)
    cache = tmp_path / "cache"
    (cache / "bases").mkdir(parents=True)
    os.symlink(os.path.dirname(moved), cache / "bases" / "renamed")
    (cache / bases.INDEX_NAME).mkdir()
    os.chmod(cache, stat.S_IRUSR | stat.S_IXUSR)
    try:
        assert base_tool.main(["find", folder]) == 0  # found by fingerprint; the index not written
        assert capsys.readouterr().out.strip() == str(cache / "bases" / "renamed" / "model.pt")
        assert base_tool.main(["list"]) == 0
        assert "renamed" in capsys.readouterr().out
        assert os.path.isdir(cache / bases.INDEX_NAME) and sorted(os.listdir(cache)) == ["bases", bases.INDEX_NAME]
    finally:
        os.chmod(cache, stat.S_IRWXU)


def test_find_failure_prints_nothing_on_stdout(tmp_path, capsys):
    assert base_tool.main(["find", "nothere"]) == 2
    out = capsys.readouterr()
    assert out.out == "" and "base 'nothere' not found" in out.err


def test_unverified_name_hit_is_the_callers_to_check(tmp_path, delta):
    """verify=False returns the file by name unread (the caller's loader checks it); verify=True passes
    over a file whose content is not the delta's and says so."""
    base, *_ = delta
    other = save_base(tmp_path / "cache" / "bases" / "tiny.bart" / "model.pt", tiny_dict(), seed=1)
    fp = bases.content_fingerprint(torch.load(base, weights_only=True)["model"])
    assert find_base(None, "tiny.bart", fp, None, verify=False).path == other
    with pytest.raises(bases.BaseNotFound, match="another fingerprint"):
        find_base(None, "tiny.bart", fp, None)
