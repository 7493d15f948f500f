"""unifairseq-export hf: fairseq BART / mBART / RoBERTa (base, merged delta) -> transformers, and LoRA /
DoRA / (IA)³ deltas -> peft adapters. Every check runs the exported folder in transformers (and peft)
and compares with the fairseq model on the same input, to 1e-4. Nothing is downloaded."""
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")  # a test requirement (requirements.txt); skipped only without it

from fairseq.checkpoint_utils import torch_persistent_save  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from hfhelp import TOL, delta, fairseq_out, hf_diff, perturb_all, roberta_inputs  # noqa: E402
from tiny import HEAD, tiny_model, tiny_roberta  # noqa: E402
import unifairseq.fairseq  # noqa: E402
from unifairseq.tools.export_cli import main as export_main  # noqa: E402
from unifairseq.tools.export_hf import HFExportError, export_hf  # noqa: E402

unifairseq.fairseq.register()
MBART = ["--encoder-normalize-before", "--decoder-normalize-before", "--layernorm-embedding"]


def hf_class(folder):
    import json

    with open(os.path.join(folder, "config.json")) as f:
        return getattr(transformers, json.load(f)["architectures"][0])


def plain(family, head=False):
    if family == "roberta":
        model, task, args = tiny_roberta("roberta_base")
        if not head:
            del model.classification_heads[HEAD]
        return perturb_all(model), task, args
    model, task, args = tiny_model("mbart_large" if family == "mbart" else "bart_base",
                                   MBART if family == "mbart" else [])
    return perturb_all(model), task, args


# ------------------------------------------------------------------ base models
@pytest.mark.parametrize("family,head", [("bart", False), ("mbart", False), ("roberta", True), ("roberta", False)])
def test_base_checkpoint_to_transformers(family, head, tmp_path):
    model, task, args = plain(family, head)
    ckpt = tmp_path / "model.pt"
    torch_persistent_save({"args": args, "model": model.state_dict(), "optimizer_history": [], "extra_state": {},
                           "last_optimizer_state": None}, str(ckpt))
    out = tmp_path / "hf"
    assert export_main(["hf", str(ckpt), str(out)]) == 0
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    cls = hf_class(str(out))
    want = {"bart": "BartForConditionalGeneration", "mbart": "MBartForConditionalGeneration",
            "roberta": "RobertaForSequenceClassification" if head else "RobertaForMaskedLM"}[family]
    assert cls.__name__ == want
    hf = cls.from_pretrained(str(out)).eval()
    ref, inputs, keep = fairseq_out(model, family, task.source_dictionary, head)
    diff = hf_diff(hf, ref, inputs, keep)
    print(f"\n{family}{' + head' if head else ''}: transformers vs fairseq max|diff| {diff:.2e}")
    assert diff <= TOL
    # never over an existing folder without --force; with it, replaced
    assert export_main(["hf", str(ckpt), str(out)]) == 2
    assert export_main(["hf", str(ckpt), str(out), "--force"]) == 0
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]
    # --force never removes a folder that holds an input, nor replaces a file
    with pytest.raises(HFExportError, match="holds the input"):
        export_hf(str(ckpt), str(tmp_path), force=True)
    (tmp_path / "file").write_text("keep")
    with pytest.raises(HFExportError, match="is not a folder"):
        export_hf(str(ckpt), str(tmp_path / "file"), force=True)
    assert ckpt.is_file() and (tmp_path / "file").read_text() == "keep"


def legacy_roberta_names(sd):
    """A RoBERTa state dict in pre-0.10 names (decoder.*, emb_layer_norm, fused in_proj), as the released
    roberta.* checkpoints store it."""
    old = {}
    for k, v in sd.items():
        k = "decoder." + k[len("encoder."):] if k.startswith("encoder.") else k
        old[k.replace(".layernorm_embedding.", ".emb_layer_norm.")] = v
    for k in [k for k in old if k.endswith(("self_attn.q_proj.weight", "self_attn.q_proj.bias"))]:
        stem, kind = k.rsplit(".q_proj.", 1)
        old[f"{stem}.in_proj_{kind}"] = torch.cat([old.pop(f"{stem}.{p}_proj.{kind}") for p in "qkv"])
    return old


def test_legacy_roberta_names_convert_as_fairseq_loads_them(tmp_path):
    """A pre-0.10 RoBERTa file (decoder.*, emb_layer_norm, fused in_proj_weight, as the released roberta.*
    checkpoints): converted as fairseq's loader upgrades it, to the same outputs."""
    model, task, args = plain("roberta", head=False)
    old = legacy_roberta_names(model.state_dict())
    assert not any(".q_proj." in k or k.startswith("encoder.") for k in old)
    ckpt = tmp_path / "model.pt"
    torch_persistent_save({"args": args, "model": old, "optimizer_history": [], "extra_state": {},
                           "last_optimizer_state": None}, str(ckpt))
    out = tmp_path / "hf"
    assert export_main(["hf", str(ckpt), str(out)]) == 0
    ref, inputs, keep = fairseq_out(model, "roberta", task.source_dictionary)
    assert hf_diff(transformers.RobertaForMaskedLM.from_pretrained(str(out)).eval(), ref, inputs, keep) <= TOL


def test_merge_onto_a_legacy_roberta_file(tmp_path):
    """A RoBERTa delta merged onto its base stored in pre-0.10 names (as the released roberta.base is) gives
    the same merged weights as onto the same base in today's names."""
    _, _, ckpt = delta("lora_attn_roberta_base", ["--attn-bn", "4"], "roberta", tmp_path)
    from fairseq.checkpoint_utils import torch_persistent_save

    from unifairseq.fairseq.checkpoint_io import load_checkpoint_file

    base = load_checkpoint_file(str(tmp_path / "base.pt"))
    torch_persistent_save({**base, "model": legacy_roberta_names(base["model"])}, str(tmp_path / "legacy.pt"))
    for name in ("base", "legacy"):
        assert export_main(["merge", str(ckpt), str(tmp_path / f"merged_{name}.pt"), "--base",
                            str(tmp_path / f"{name}.pt")]) == 0
    a, b = (load_checkpoint_file(str(tmp_path / f"merged_{n}.pt"))["model"] for n in ("base", "legacy"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_bart_classification_head(tmp_path):
    """fairseq BART + classification_heads.NAME -> BartForSequenceClassification: both read the decoder state
    at the last </s>, with the source shifted right (</s> first) as the decoder input."""
    model, task, args = tiny_model("bart_base")
    model.register_classification_head("mnli", num_classes=3)
    perturb_all(model)
    ckpt = tmp_path / "model.pt"
    torch_persistent_save({"args": args, "model": model.state_dict(), "optimizer_history": [], "extra_state": {},
                           "last_optimizer_state": None}, str(ckpt))
    out = tmp_path / "hf"
    assert export_main(["hf", str(ckpt), str(out)]) == 0
    hf = hf_class(str(out)).from_pretrained(str(out)).eval()
    assert type(hf).__name__ == "BartForSequenceClassification" and hf.config.num_labels == 3
    d = task.source_dictionary
    src = torch.randint(d.nspecial, len(d), (3, 7), generator=torch.Generator().manual_seed(5))
    src[:, -1] = d.eos()
    prev = torch.cat([src[:, -1:], src[:, :-1]], dim=1)  # fairseq's sentence_prediction decoder input
    with torch.no_grad():
        ref = model(src, torch.full((3,), 7), prev, features_only=True, classification_head_name="mnli")[0]
        got = hf(input_ids=src).logits
    print(f"\nBART + head: max|diff| {(got - ref).abs().max().item():.2e}")
    assert got.shape == ref.shape and (got - ref).abs().max() <= TOL


# ------------------------------------------------------------------ deltas
DELTAS = [("lora_attn_bart_base", ["--attn-bn", "4"], "bart"),
          ("dora_attn_bart_base", ["--attn-bn", "4"], "bart"),
          ("ia3_mbart_large", [], "mbart"),
          ("lora_ffn_roberta_base", ["--ffn-bn", "8"], "roberta"),
          ("lora_attn_roberta_base", ["--attn-bn", "4"], "roberta"),
          ("ia3_roberta_base", [], "roberta"),
          # attention and FFN LoRA of different ranks: one alpha, per-module r (peft's rank_pattern)
          ("delta_bart_base", ["--attn-mode", "lora", "--ffn-mode", "lora", "--attn-bn", "4", "--ffn-bn", "8",
                               "--lora-alpha", "12"], "bart")]


@pytest.mark.parametrize("arch,flags,family", DELTAS, ids=[d[0] if d[0] != "delta_bart_base" else "lora_attn4+ffn8"
                                                         for d in DELTAS])
def test_delta_merged_and_peft(arch, flags, family, tmp_path):
    from peft import PeftModel, get_peft_model_state_dict

    model, task, ckpt = delta(arch, flags, family, tmp_path)
    head = family == "roberta"
    ref, inputs, keep = fairseq_out(model, family, task.source_dictionary, head)

    merged = tmp_path / "merged"
    assert export_main(["hf", str(ckpt), str(merged)]) == 0
    hf_merged = hf_class(str(merged)).from_pretrained(str(merged)).eval()
    d_merged = hf_diff(hf_merged, ref, inputs, keep)

    out = tmp_path / "peft"
    assert export_main(["hf", str(ckpt), str(out), "--peft"]) == 0
    assert {p.name for p in (out / "adapter").iterdir()} == {"adapter_config.json", "adapter_model.safetensors"}
    cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(out / "base")
    if cfg["peft_type"] == "LORA":  # unifairseq's s = alpha / r is peft's lora_alpha / r: the same alpha
        scales = {m.scaling for m in model.modules() if type(m).__name__ in ("LoRA", "DoRA")}
        assert {cfg["lora_alpha"] / r for r in [cfg["r"], *cfg["rank_pattern"].values()]} == scales
    base_cls = type(hf_merged)  # the task class (with the head for RoBERTa)
    base_model = base_cls.from_pretrained(str(out / "base"))
    pm = PeftModel.from_pretrained(base_model, str(out / "adapter")).eval()
    d_peft = hf_diff(pm, ref, inputs, keep)
    # the file holds exactly what peft itself saves for this config (names and shapes)
    ours = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    theirs = get_peft_model_state_dict(pm)
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}
    for k in ours:
        assert torch.equal(ours[k], theirs[k].float()), k
    # peft's merge equals our merged export
    if arch == "ia3_roberta_base":
        # peft 0.21.2's IA3 merge_and_unload fails on the modules_to_save wrapper of the head (AttributeError:
        # 'RobertaClassificationHead' object has no attribute 'weight'); merge_adapter merges the same in place
        pm.merge_adapter()
        unloaded = pm.get_base_model()
    else:
        unloaded = pm.merge_and_unload().eval()
    d_unload = hf_diff(unloaded, ref, inputs, keep)
    mw = dict(hf_merged.state_dict())
    w_diff = max((v - mw[k]).abs().max().item() for k, v in unloaded.state_dict().items() if k in mw)
    print(f"\n{arch}: merged {d_merged:.2e}, peft {d_peft:.2e}, peft merge_and_unload {d_unload:.2e} "
          f"(weights vs our merge {w_diff:.2e})")
    assert max(d_merged, d_peft, d_unload) <= TOL
    assert w_diff <= 1e-5


def test_a_shared_delta_folder_exports_as_its_checkpoint(tmp_path):
    """`unifairseq-export hf` reads a delta folder (unifairseq-export inference DIR) as it reads the .pt:
    the same peft adapter, the same transformers base and merged weights, bitwise."""
    _, _, ckpt = delta("lora_attn_bart_base", ["--attn-bn", "4"], "bart", tmp_path)
    folder = tmp_path / "shared"
    assert export_main(["inference", str(ckpt), str(folder)]) == 0
    for src, name in ((ckpt, "from_pt"), (folder, "from_folder")):
        assert export_main(["hf", str(src), str(tmp_path / name / "peft"), "--peft"]) == 0
        assert export_main(["hf", str(src), str(tmp_path / name / "merged")]) == 0
    for rel in ("peft/adapter/adapter_model.safetensors", "peft/base/model.safetensors", "merged/model.safetensors"):
        a, b = load_file(str(tmp_path / "from_pt" / rel)), load_file(str(tmp_path / "from_folder" / rel))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), rel


def test_base_only_is_the_frozen_base(tmp_path):
    model, task, ckpt = delta("lora_attn_bart_base", ["--attn-bn", "4"], "bart", tmp_path)
    out = tmp_path / "base"
    assert export_main(["hf", str(ckpt), str(out), "--base-only"]) == 0
    hf = transformers.BartForConditionalGeneration.from_pretrained(str(out)).eval()
    twin, _, _ = tiny_model("bart_base")
    from unifairseq.fairseq.checkpoint_io import load_checkpoint_file

    twin.load_state_dict(load_checkpoint_file(str(tmp_path / "base.pt"))["model"], strict=True)
    ref, inputs, keep = fairseq_out(twin.eval(), "bart", task.source_dictionary)
    assert hf_diff(hf, ref, inputs, keep) <= TOL


def test_unmergeable_and_non_peft_deltas_are_refused_with_the_alternatives(tmp_path, capsys):
    _, _, ckpt = delta("mam_bart_base", ["--attn-bn", "4", "--ffn-bn", "4", "--mid-dim", "8"], "bart", tmp_path)
    for extra in ([], ["--peft"]):
        assert export_main(["hf", str(ckpt), str(tmp_path / "x"), *extra]) == 2
        err = capsys.readouterr().err
        assert "adapters 1.3.0" in err and "transformers~=4.57.6" in err, err
        assert not (tmp_path / "x").exists()
    assert "no transformers folder for this delta" in export_err(tmp_path, ckpt, [], capsys)
    sub = tmp_path / "bitfit"
    sub.mkdir()
    _, _, ckpt = delta("bitfit_bart_base", [], "bart", sub)
    assert "bitfit has no peft form" in export_err(sub, ckpt, ["--peft"], capsys)
    with pytest.raises(HFExportError, match="plain fairseq checkpoint"):
        export_hf(str(sub / "base.pt"), str(sub / "y"), peft=True)


def export_err(tmp_path, ckpt, extra, capsys):
    assert export_main(["hf", str(ckpt), str(tmp_path / "x"), *extra]) == 2
    return capsys.readouterr().err


def test_adapters_export_refuses_what_adapters_computes_otherwise(tmp_path, capsys):
    for i, (arch, flags, family, why) in enumerate([
            ("pfeiffer_bart_base", ["--ffn-bn", "8"], "bart", "only a parallel FFN adapter alone"),
            ("scaled_pa_mbart_large", ["--ffn-bn", "8"], "mbart", "only post-LN BART was checked"),
            ("lora_attn_bart_base", ["--attn-bn", "4"], "bart", "only a parallel FFN adapter alone")]):
        sub = tmp_path / str(i)
        sub.mkdir()
        _, _, ckpt = delta(arch, flags, family, sub)
        assert why in export_err(sub, ckpt, ["--adapters"], capsys)
        assert not (sub / "x").exists()


def test_several_heads_need_head(tmp_path, capsys):
    model, task, args = plain("roberta", head=True)
    model.register_classification_head("other", num_classes=3)
    perturb_all(model)
    ckpt = tmp_path / "model.pt"
    torch_persistent_save({"args": args, "model": model.state_dict(), "optimizer_history": [], "extra_state": {},
                           "last_optimizer_state": None}, str(ckpt))
    err = export_err(tmp_path, ckpt, [], capsys)
    assert "2 classification heads (other, sentence_classification_head)" in err and "--head NAME" in err
    assert export_main(["hf", str(ckpt), str(tmp_path / "x"), "--head", "other"]) == 0
    hf = transformers.RobertaForSequenceClassification.from_pretrained(str(tmp_path / "x")).eval()
    t = roberta_inputs(task.source_dictionary)
    with torch.no_grad():
        ref = model(t, features_only=True, classification_head_name="other")[0]
    assert hf.config.num_labels == 3 and hf_diff(hf, ref, dict(input_ids=t, attention_mask=t.ne(1)), None) <= TOL
