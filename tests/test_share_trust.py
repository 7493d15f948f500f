"""Trust at the edges, on real models: `.pt` deltas get the checks delta folders get (base, dictionary,
shape) through one module; the base fingerprint changes under any change of a value; folders of another
family or without a dictionary record are refused where they are applied; older deltas keep loading."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from env import REPO
from tiny import random_batch, tiny_dict, tiny_model
from unifairseq.core import bases
from unifairseq.core.deltafile import CONFIG_NAME, DeltaFileError, read_delta
from deltahelp import resign
from unifairseq.fairseq.checkpoint_io import INFO_KEY, DeltaCheckpointError, load_checkpoint_file
from unifairseq.tools.export import export_inference, export_merge
from unifairseq.tools.tiny_base import checkpoint_state

ARCH, FLAGS = "lora_attn_bart_base", ["--attn-bn", "4"]
V1 = Path(__file__).resolve().parent / "fixtures" / "v1_folder"  # written by older code (make_v1_folder.py)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("UNIFAIRSEQ_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("UNIFAIRSEQ_BASES", str(tmp_path / "bases"))
    monkeypatch.delenv("UNIFAIRSEQ_DELTA_BASE", raising=False)


def swapped(d):
    """The same dictionary with two words swapped: same size, other meaning of two embedding rows."""
    out = tiny_dict()
    i, j = out.index("w3"), out.index("w7")
    out.symbols[i], out.symbols[j] = out.symbols[j], out.symbols[i]
    out.indices = {s: k for k, s in enumerate(out.symbols)}
    return out


@pytest.fixture
def trained(tmp_path):
    """A tiny base saved as bart.base is released, a LoRA delta moved off its init, as a .pt and a folder."""
    d = tiny_dict()
    plain, _, pargs = tiny_model("bart_base", dictionary=d)
    base = tmp_path / "bases" / "tiny.bart" / "model.pt"
    base.parent.mkdir(parents=True)
    torch.save(checkpoint_state(plain, pargs), base)
    model, _, args = tiny_model(ARCH, FLAGS, dictionary=d, seed=7)
    model.load_base(str(base))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1)
    pt = tmp_path / "delta.pt"
    torch.save(dict(checkpoint_state(model, args)), pt)
    folder = tmp_path / "shared"
    export_inference(str(pt), str(folder))
    return model.eval(), base, pt, folder, d


def fresh(d, *flags):
    model, _, _ = tiny_model(ARCH, [*FLAGS, *flags], dictionary=d, seed=3)
    return model


def logits(model, d):
    src, lens, prev, _ = random_batch(d)
    with torch.no_grad():
        return model.eval()(src, lens, prev)[0]




# ---------------------------------------------------------------- the fingerprint
@pytest.mark.parametrize("chunk", [None, 100])
def test_fingerprint_changes_with_any_single_value(chunk, monkeypatch):
    """Any value of any tensor (first, middle, last; with 100-byte chunks: in every chunk of the hash tree)."""
    if chunk:
        monkeypatch.setattr(bases, "CHUNK", chunk)
    g = torch.Generator().manual_seed(0)
    state = {"embed_tokens.weight": torch.randn(50, 512, generator=g), "layer.bias": torch.randn(7, generator=g),
             "ln.weight": torch.randn(3, generator=g).half(), "emb.bf16": torch.randn(9, generator=g).bfloat16()}
    fp = bases.content_fingerprint(state)
    assert fp.startswith("v2:") and bases.is_content_fingerprint(fp)
    same = {k: v.clone() for k, v in state.items()}
    same["embed_tokens.weight"] = same["embed_tokens.weight"].t().contiguous().t()  # other strides, same values
    assert bases.content_fingerprint(same) == fp
    for name, t in state.items():
        for idx in (0, t.numel() // 2 + 1, t.numel() - 1):
            changed = {k: v.clone() for k, v in state.items()}
            flat = changed[name].view(-1)
            flat[idx] = flat[idx] + 1
            assert bases.content_fingerprint(changed) != fp, (name, idx)


def test_what_the_sampled_v1_fingerprint_missed():
    """The tester's case: 21,504 of the 25,600 values of an embedding replaced. v1 (4,096 sampled values)
    did not see it; v2 does."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(100, 256, generator=g)
    state = {"encoder.embed_tokens.weight": w}
    bad = w.clone().view(-1)
    sampled = torch.zeros(bad.numel(), dtype=torch.bool)
    sampled[torch.arange(0, bad.numel(), bad.numel() // 4096)[:4096]] = True  # what v1 read
    bad[~sampled] = 0.0
    assert int((~sampled).sum()) == 21504
    changed = {"encoder.embed_tokens.weight": bad.view(100, 256)}
    assert bases.content_fingerprint(changed, "v1") == bases.content_fingerprint(state, "v1")
    assert bases.content_fingerprint(changed) != bases.content_fingerprint(state)


def test_folder_with_a_v1_fingerprint_still_applies_and_is_found_by_content(trained, tmp_path, capsys):
    model, base, _, folder, d = trained
    v1 = bases.content_fingerprint(load_checkpoint_file(str(base))["model"], "v1")
    resign(folder, lambda c: (c.pop("digest"), c.update(format_version=1), c["base"].update(fingerprint=v1)))
    target = fresh(d, "--delta-base", str(base))
    target.apply_delta_file(str(folder))
    assert torch.equal(logits(target, d), logits(model, d))
    from unifairseq.fairseq.checkpoint_io import file_content_fingerprint

    os.rename(base.parent, base.parent.parent / "renamed")
    from unifairseq.tools.base import find

    assert find(str(folder)) == 0  # unifairseq-base find DIR: by the v1 fingerprint
    assert capsys.readouterr().out.strip().endswith("renamed/model.pt")
    os.remove(tmp_path / "cache" / bases.INDEX_NAME)
    found = bases.resolve(None, "tiny.bart", v1, None, file_content_fingerprint)
    assert found.path.endswith("renamed/model.pt") and "fingerprint" in found.how
    index = json.loads((tmp_path / "cache" / bases.INDEX_NAME).read_text())
    assert index[os.path.realpath(found.path)]["fingerprints"] == {"v1": v1}


def test_v1_folder_written_by_older_code_keeps_loading(tmp_path):
    """The committed folder of format version 1 (no digest, a v1 base fingerprint) loads onto its base with
    today's code and gives the logits it gave then, bitwise; a tampered copy is still refused."""
    import shutil

    cfg, _ = read_delta(str(V1 / "mam"))
    assert cfg["format_version"] == 1 and "digest" not in cfg
    assert bases.fingerprint_version(cfg["base"]["fingerprint"]) == "v1"
    d = tiny_dict()
    flags = ["--attn-bn", "4", "--ffn-bn", "8", "--mid-dim", "16", "--attn-mode", "prefix_nomlp",
             "--delta-base", str(V1 / "base" / "model.pt")]
    model, _, _ = tiny_model("mam_bart_base", flags, dictionary=d, seed=3)
    model.apply_delta_file(str(V1 / "mam"))
    assert torch.equal(logits(model, d), torch.load(V1 / "logits.pt", weights_only=True))
    bad = tmp_path / "mam"
    shutil.copytree(V1 / "mam", bad)
    resign(bad, lambda c: c["delta"].update(ffn_adapter_scalar=0.0))  # no digest in v1: the schema catches it
    with pytest.raises(DeltaFileError, match="field delta.ffn_adapter_scalar: 0 switches the FFN adapter off"):
        read_delta(str(bad))


# ---------------------------------------------------------------- .pt and folders: the same checks
def test_pt_delta_dictionary_is_checked_as_a_folder_is(trained):
    """Decoding with two words of the dictionary swapped: the .pt delta was accepted before, the folder
    refused; now both are refused with the same line."""
    model, base, pt, folder, d = trained
    state = load_checkpoint_file(str(pt))["model"]
    other = swapped(d)
    with pytest.raises(DeltaCheckpointError, match=r"the task's source dictionary \(sha256 [0-9a-f]{16}…\) is not "
                                                   r"the one the delta was trained with"):
        fresh(other, "--delta-base", str(base)).load_state_dict(state)
    with pytest.raises(DeltaCheckpointError, match=r"the task's source dictionary"):
        fresh(other, "--delta-base", str(base)).apply_delta_file(str(folder))
    ok = fresh(d, "--delta-base", str(base))
    ok.load_state_dict(state)
    assert torch.equal(logits(ok, d), logits(model, d))


def test_old_pt_without_a_dictionary_record_keeps_loading(trained, caplog):
    model, base, pt, _, d = trained
    state = load_checkpoint_file(str(pt))["model"]
    del state[INFO_KEY]  # before the record: checked by the plan fingerprint, the dictionary with a warning
    target = fresh(swapped(d), "--delta-base", str(base))
    target.load_state_dict(state)
    assert "records no dictionary fingerprint" in caplog.text
    info = json.loads(bytes(load_checkpoint_file(str(pt))["model"][INFO_KEY].tolist()).decode())
    info["dictionary"] = {}  # an empty record is not an old file: refused unless forced from the command line
    state[INFO_KEY] = torch.tensor(list(json.dumps(info).encode()), dtype=torch.uint8)
    with pytest.raises(DeltaCheckpointError, match="records no dictionary fingerprint.*--delta-allow-base-mismatch"):
        fresh(d, "--delta-base", str(base)).load_state_dict(state)
    fresh(d, "--delta-base", str(base), "--delta-allow-base-mismatch").load_state_dict(state)


def test_pt_delta_on_another_base_names_both_content_fingerprints(trained, tmp_path):
    model, base, pt, _, d = trained
    plain, _, pargs = tiny_model("bart_base", dictionary=d, seed=5)
    other = tmp_path / "other.pt"
    torch.save(checkpoint_state(plain, pargs), other)
    state = load_checkpoint_file(str(pt))["model"]
    with pytest.raises(DeltaCheckpointError, match=rf"different base model.*{model.base_content[:16]}"):
        fresh(d, "--delta-base", str(other)).load_state_dict(state)
    forced = fresh(d, "--delta-base", str(other), "--delta-allow-base-mismatch")
    forced.load_state_dict(state)  # a warning, from the command-line flag only


def test_pt_delta_of_another_shape_is_one_line(trained):
    model, base, pt, _, d = trained
    state = load_checkpoint_file(str(pt))["model"]
    name = next(k for k in state if "delta_lora.W_up" in k)
    state[name] = torch.zeros(3, 3)
    with pytest.raises(DeltaCheckpointError, match=rf"{name} has shape \(3, 3\) there and \(32, 4\) here"):
        fresh(d, "--delta-base", str(base)).load_state_dict(state)


def test_folder_without_dictionary_record_is_refused_where_applied(trained):
    model, base, _, folder, d = trained
    resign(folder, lambda c: (c.pop("digest"), c.update(format_version=1, dictionary={})))
    with pytest.raises(DeltaCheckpointError, match="records no dictionary fingerprint.*--delta-allow-base-mismatch"):
        fresh(d, "--delta-base", str(base)).apply_delta_file(str(folder))
    forced = fresh(d, "--delta-base", str(base), "--delta-allow-base-mismatch")
    forced.apply_delta_file(str(folder))
    assert torch.equal(logits(forced, d), logits(model, d))


def test_base_weight_in_a_folder_is_refused_by_the_model_check(trained):
    from unifairseq.fairseq.deltacheck import check_tensors

    model, base, _, folder, d = trained
    _, tensors = read_delta(str(folder))
    target = fresh(d, "--delta-base", str(base))
    tensors["encoder.embed_tokens.weight"] = torch.zeros_like(target.encoder.embed_tokens.weight)
    before = target.encoder.embed_tokens.weight.clone()
    with pytest.raises(DeltaCheckpointError, match="1 base weight.* the plan does not train, e.g. "
                                                   "encoder.embed_tokens.weight"):
        check_tensors(target, "x", tensors)
    assert torch.equal(target.encoder.embed_tokens.weight, before)


def test_relabelled_integer_tensor_is_refused_by_the_model_check(trained):
    from unifairseq.fairseq.deltacheck import check_tensors

    _, base, _, folder, d = trained
    _, tensors = read_delta(str(folder))
    k = next(iter(tensors))
    tensors[k] = tensors[k].view(torch.int32)
    with pytest.raises(DeltaCheckpointError, match=rf"{k} is torch.int32, the plan builds torch.float32"):
        check_tensors(fresh(d, "--delta-base", str(base)), "x", tensors)


# ---------------------------------------------------------------- another family, merge
def test_delta_of_another_family_is_not_merged(trained, tmp_path):
    _, base, _, folder, d = trained
    resign(folder, lambda c: (c.update(family="roberta", arch="lora_attn_roberta_base", parent_arch="roberta_base"),
                              c["dictionary"].pop("target")))
    with pytest.raises(DeltaCheckpointError, match=r"a roberta delta \(lora_attn_roberta_base\) cannot be merged "
                                                   r"into the bart base"):
        export_merge(str(folder), str(tmp_path / "merged.pt"))
    assert not (tmp_path / "merged.pt").exists()


def run_export(*argv):
    p = subprocess.run([sys.executable, "-m", "unifairseq.tools.export_cli", *argv], capture_output=True, text=True,
                       cwd=REPO, timeout=300, env=dict(os.environ, PYTHONPATH=str(REPO)))
    lines = [line for line in p.stderr.splitlines() if line.strip() and "INFO" not in line and "Warning" not in line
             and not line.startswith(" ")]
    return p, lines


def test_merge_of_infinite_alpha_is_one_line_not_a_non_finite_checkpoint(trained, tmp_path):
    _, _, _, folder, _ = trained
    raw = (folder / CONFIG_NAME).read_text()
    (folder / CONFIG_NAME).write_text(raw.replace('"lora_alpha": 32.0', '"lora_alpha": Infinity'))
    p, lines = run_export("merge", str(folder), str(tmp_path / "merged.pt"))
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert lines[-1].startswith("unifairseq-export: error: ") and str(folder / CONFIG_NAME) in lines[-1]
    assert "holds the non-number Infinity" in lines[-1] and not (tmp_path / "merged.pt").exists()
