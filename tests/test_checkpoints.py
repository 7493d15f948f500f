"""Delta checkpoints: fairseq's own save path, export/merge/unmerge parity, and every bad-file message."""
import os

import pytest
import torch
from fairseq import checkpoint_utils

from methods import IDS, MERGEABLE, METHODS
from ckpthelp import save_base_checkpoint, write_delta_checkpoint
from tiny import HEAD, full_logits, perturb_deltas, random_batch, roberta_logits, roberta_tokens, tiny_dict, tiny_model
from trainhelp import make_trainer, toy_sample
from unifairseq.fairseq.checkpoint_io import META_KEYS, DeltaCheckpointError, load_checkpoint_file
from unifairseq.core.modules import is_delta_name
from unifairseq.tools.export import export_inference, export_merge, export_unmerge
from unifairseq.tools.export_cli import main as export_main


def trained_checkpoint(tmp_path, arch, flags, steps=3):
    """Train a few real updates through fairseq's Trainer and let it write checkpoint_last.pt."""
    d = tiny_dict()
    trainer, model = make_trainer(arch, flags, d)
    base = tmp_path / "base.pt"
    save_base_checkpoint(model, base)
    model.base_path = str(base)
    sample = toy_sample(d)
    for _ in range(steps):
        trainer.train_step([sample])
    ckpt = tmp_path / "checkpoint_last.pt"
    trainer.consolidate_optimizer()  # as fairseq's checkpoint_utils.save_checkpoint does
    trainer.save_checkpoint(str(ckpt), {})
    return model, ckpt, base, d


def load_with_fairseq(path, d, arch, flags, overrides=None):
    """What fairseq-generate / the hub do: build from the checkpoint's cfg, then load_state_dict."""
    state = checkpoint_utils.load_checkpoint_to_cpu(str(path), arg_overrides=overrides)
    model, _, _ = tiny_model(arch, flags, dictionary=d, seed=99)
    for k, v in (overrides or {}).items():
        setattr(model, k, v)
    model.load_state_dict(state["model"], strict=True)
    return model.eval()


@pytest.mark.parametrize("name,arch,flags,identity", METHODS, ids=IDS)
def test_trainer_checkpoint_holds_only_trained_tensors_and_round_trips(name, arch, flags, identity, tmp_path):
    model, ckpt, base, d = trained_checkpoint(tmp_path, arch, flags)
    state = load_checkpoint_file(str(ckpt))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    saved = set(state["model"]) - set(META_KEYS)
    assert saved == trainable
    # optimizer state only for the trained tensors
    opt_state = state["last_optimizer_state"]["state"]
    assert sum(v["exp_avg"].numel() for v in opt_state.values()) == sum(
        p.numel() for p in model.parameters() if p.requires_grad)
    fresh = load_with_fairseq(ckpt, d, arch, flags)
    model.eval()
    src, lens, prev, _ = random_batch(d)
    with torch.no_grad():
        assert torch.equal(full_logits(model, src, lens, prev), full_logits(fresh, src, lens, prev))
    assert fresh.base_path == str(base)


EXPORTABLE = [m for m in METHODS if m[0] in ("mam", "prefix", "gated_prefix", "prefix_mhpa_mlp", "lora_attn")]


@pytest.mark.parametrize("name,arch,flags,identity", EXPORTABLE, ids=[m[0] for m in EXPORTABLE])
def test_export_inference_folds_prefix_mlp_with_same_outputs(name, arch, flags, identity, tmp_path):
    model, ckpt, base, d = trained_checkpoint(tmp_path, arch, flags)
    out = tmp_path / "inference.pt"
    info = export_inference(str(ckpt), str(out))
    state = load_checkpoint_file(str(out))
    assert state["last_optimizer_state"] is None
    assert not any("mlp_" in k or "wte" in k for k in state["model"])
    assert os.path.getsize(out) < os.path.getsize(ckpt)
    if "prefix" in name or name == "mam":
        assert info["dropped"] > 0
        assert state["cfg"]["model"].attn_mode == "prefix_nomlp"
        fresh = load_with_fairseq(out, d, arch, flags + ["--attn-mode", "prefix_nomlp"])
    else:
        fresh = load_with_fairseq(out, d, arch, flags)
    model.eval()
    src, lens, prev, _ = random_batch(d)
    with torch.no_grad():
        diff = (full_logits(model, src, lens, prev) - full_logits(fresh, src, lens, prev)).abs().max()
    assert diff <= 1e-5, diff


@pytest.mark.parametrize("name", [m[0] for m in MERGEABLE])
def test_merge_gives_plain_fairseq_checkpoint_and_unmerge_restores_base(name, tmp_path):
    arch, flags = {m[0]: (m[1], m[2]) for m in METHODS}[name]
    model, ckpt, base, d = trained_checkpoint(tmp_path, arch, flags)
    merged = tmp_path / "merged.pt"
    info = export_merge(str(ckpt), str(merged))
    assert info["arch"] == "bart_base"
    state = load_checkpoint_file(str(merged))
    assert not any(is_delta_name(k) for k in state["model"])
    plain, _, _ = tiny_model("bart_base", dictionary=d)  # fairseq's own BARTModel, no deltas
    plain.load_state_dict(state["model"], strict=True)
    model.eval(), plain.eval()
    src, lens, prev, _ = random_batch(d)
    with torch.no_grad():
        diff = (full_logits(model, src, lens, prev) - full_logits(plain, src, lens, prev)).abs().max()
    assert diff <= 1e-4, diff
    if name == "bitfit":
        with pytest.raises(DeltaCheckpointError, match="BitFit"):
            export_unmerge(str(merged), str(ckpt), str(tmp_path / "back.pt"))
        return
    back = tmp_path / "back.pt"
    export_unmerge(str(merged), str(ckpt), str(back))
    b0, b1 = load_checkpoint_file(str(base))["model"], load_checkpoint_file(str(back))["model"]
    assert b0.keys() == b1.keys()
    for k in b0:
        assert torch.allclose(b0[k], b1[k], atol=1e-5), k


@pytest.mark.parametrize("arch,flags", [("lora_attn_roberta_base", ["--attn-bn", "4"]), ("bitfit_roberta_base", []),
                                        ("ia3_roberta_base", []), ("dora_attn_roberta_base", ["--attn-bn", "4"])])
def test_roberta_merge_keeps_the_trained_head_and_loads_in_fairseqs_roberta(arch, flags, tmp_path):
    """Merging a RoBERTa delta writes a plain roberta_base checkpoint that carries the trained
    classification head, and fairseq's own RobertaModel loads it (it registers the head from the file,
    as the hub does with load_checkpoint_heads) and gives the delta model's outputs."""
    from tiny import tiny_roberta

    model, task, args = tiny_roberta(arch, flags)
    perturb_deltas(model)
    ckpt, base = write_delta_checkpoint(model, args, tmp_path)
    merged = tmp_path / "merged.pt"
    assert export_merge(str(ckpt), str(merged))["arch"] == "roberta_base"
    state = load_checkpoint_file(str(merged))
    assert any(k.startswith(f"classification_heads.{HEAD}.out_proj") for k in state["model"])
    plain, _, plain_args = tiny_roberta("roberta_base", seed=9)
    del plain.classification_heads[HEAD]
    plain.args.load_checkpoint_heads = True
    plain.load_state_dict(state["model"], strict=True)  # fairseq's upgrade_state_dict_named runs here
    tokens = roberta_tokens(task.source_dictionary)
    model.eval(), plain.eval()
    with torch.no_grad():
        assert torch.allclose(roberta_logits(model, tokens), roberta_logits(plain, tokens), atol=1e-5)
    if arch.startswith("bitfit"):
        return
    back = tmp_path / "back.pt"
    export_unmerge(str(merged), str(ckpt), str(back))
    b0, b1 = load_checkpoint_file(str(base))["model"], load_checkpoint_file(str(back))["model"]
    encoder = [k for k in b0 if not k.startswith("classification_heads.")]  # the test's base file holds a head
    assert set(encoder) == set(b1)  # the delta's head goes with the delta
    for k in encoder:
        assert torch.allclose(b0[k], b1[k], atol=1e-5), k


@pytest.mark.parametrize("arch", ["lora_attn_mbart_large", "dora_attn_mbart_large", "ia3_mbart_large"])
def test_mbart_merge_round_trip(arch, tmp_path):
    model, task, args = tiny_model(arch, ["--attn-bn", "4"])
    perturb_deltas(model)
    ckpt, base = write_delta_checkpoint(model, args, tmp_path)
    merged = tmp_path / "merged.pt"
    assert export_merge(str(ckpt), str(merged))["arch"] == "mbart_large"
    plain, _, _ = tiny_model("mbart_large", ["--encoder-normalize-before", "--decoder-normalize-before",
                                             "--layernorm-embedding"], dictionary=task.source_dictionary)
    plain.load_state_dict(load_checkpoint_file(str(merged))["model"], strict=True)
    src, lens, prev, _ = random_batch(task.source_dictionary)
    model.eval(), plain.eval()
    with torch.no_grad():
        assert torch.allclose(full_logits(model, src, lens, prev), full_logits(plain, src, lens, prev), atol=1e-5)
    back = tmp_path / "back.pt"
    export_unmerge(str(merged), str(ckpt), str(back))
    b0, b1 = load_checkpoint_file(str(base))["model"], load_checkpoint_file(str(back))["model"]
    for k in b0:
        assert torch.allclose(b0[k], b1[k], atol=1e-5), k


def test_merge_refuses_methods_that_cannot_merge(tmp_path):
    _, ckpt, _, _ = trained_checkpoint(tmp_path, "mam_bart_base", ["--attn-bn", "4", "--ffn-bn", "4",
                                                                   "--mid-dim", "8"], steps=1)
    with pytest.raises(DeltaCheckpointError, match="cannot merge --attn-mode prefix and --ffn-mode adapter"):
        export_merge(str(ckpt), str(tmp_path / "m.pt"))
    assert not (tmp_path / "m.pt").exists()


def test_export_never_overwrites_without_force(tmp_path, capsys):
    _, ckpt, _, _ = trained_checkpoint(tmp_path, "lora_attn_bart_base", ["--attn-bn", "4"], steps=1)
    out = tmp_path / "keep.pt"
    out.write_bytes(b"user's file")
    assert export_main(["inference", str(ckpt), str(out)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"user's file"
    assert export_main(["inference", str(ckpt), str(ckpt), "--force"]) == 2  # never onto its own input
    assert export_main(["inference", str(ckpt), str(out), "--force"]) == 0
    assert load_checkpoint_file(str(out))["model"]


def test_delta_on_a_different_base_is_refused_with_both_fingerprints(tmp_path):
    arch, flags = "lora_attn_bart_base", ["--attn-bn", "4"]
    model, ckpt, base, d = trained_checkpoint(tmp_path, arch, flags, steps=1)
    other, _, _ = tiny_model(arch, flags, dictionary=d, seed=7)  # same architecture, other weights
    other_base = tmp_path / "other_base.pt"
    save_base_checkpoint(other, other_base)
    with pytest.raises(DeltaCheckpointError) as e:
        load_with_fairseq(ckpt, d, arch, flags, overrides={"delta_base": str(other_base)})
    msg = str(e.value)
    assert "different base model" in msg and "--delta-allow-base-mismatch" in msg
    assert model.base_fingerprint[:16] in msg
    # the explicit override loads it anyway
    forced = load_with_fairseq(ckpt, d, arch, flags, overrides={"delta_base": str(other_base),
                                                                "delta_allow_base_mismatch": True})
    assert forced.base_path == str(other_base)


def test_delta_on_another_architecture_is_refused(tmp_path):
    arch, flags = "lora_attn_bart_base", ["--attn-bn", "4"]
    _, ckpt, _, d = trained_checkpoint(tmp_path, arch, flags, steps=1)
    wide, _, _ = tiny_model(arch, flags + ["--encoder-ffn-embed-dim", "48", "--decoder-ffn-embed-dim", "48"],
                            dictionary=d)
    wide_base = tmp_path / "wide_base.pt"
    save_base_checkpoint(wide, wide_base)
    with pytest.raises(DeltaCheckpointError, match="does not fit this model"):
        load_with_fairseq(ckpt, d, arch, flags, overrides={"delta_base": str(wide_base)})


def test_missing_base_names_the_fix(tmp_path):
    arch, flags = "lora_attn_bart_base", ["--attn-bn", "4"]
    _, ckpt, base, d = trained_checkpoint(tmp_path, arch, flags, steps=1)
    os.remove(base)
    with pytest.raises(DeltaCheckpointError, match="which is not there.*--delta-base"):
        load_with_fairseq(ckpt, d, arch, flags)


def test_truncated_corrupt_and_wrong_format_files(tmp_path):
    _, ckpt, _, _ = trained_checkpoint(tmp_path, "lora_attn_bart_base", ["--attn-bn", "4"], steps=1)
    data = ckpt.read_bytes()
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(DeltaCheckpointError, match="truncated or corrupt"):
        load_checkpoint_file(str(trunc))
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(DeltaCheckpointError, match="empty"):
        load_checkpoint_file(str(empty))
    text = tmp_path / "notes.pt"
    text.write_text("these are my notes, not a checkpoint\n")
    with pytest.raises(DeltaCheckpointError, match="truncated or corrupt|not a readable PyTorch checkpoint"):
        load_checkpoint_file(str(text))
    tensor_only = tmp_path / "tensor.pt"
    torch.save({"weights": torch.zeros(3)}, tensor_only)
    with pytest.raises(DeltaCheckpointError, match="not a fairseq checkpoint"):
        load_checkpoint_file(str(tensor_only))
    with pytest.raises(DeltaCheckpointError, match="does not exist"):
        load_checkpoint_file(str(tmp_path / "nope.pt"))
    # the export CLI turns each into a one-line error and exit code 2
    assert export_main(["inference", str(trunc), str(tmp_path / "o.pt")]) == 2


VANILLA = r'''
import argparse, sys, torch
# what any torch >= 2.6 user does for fairseq's released checkpoints (bart.large holds a Namespace too)
torch.serialization.add_safe_globals([argparse.Namespace])
from fairseq import checkpoint_utils
from fairseq.data import Dictionary
from fairseq.tasks.translation import TranslationTask
path, inputs, out = sys.argv[1:4]
state = checkpoint_utils.load_checkpoint_to_cpu(path)  # plain torch.load: weights_only=True on torch >= 2.6
d = Dictionary()
for i in range(40):
    d.add_symbol(f"w{i}")
d.pad_to_multiple_(8)
cfg = state["cfg"]
task = TranslationTask(cfg.task, d, d)
model = task.build_model(cfg.model)
model.load_state_dict(state["model"], strict=True)
model.eval()
src, lens, prev = torch.load(inputs)
with torch.no_grad():
    torch.save(model(src, lens, prev)[0], out)
assert not any(m.startswith("unifairseq") for m in sys.modules), "vanilla fairseq only"
print(type(model).__module__, type(model).__name__)
'''


def test_merged_checkpoint_loads_in_vanilla_fairseq(tmp_path):
    """No --user-dir, no unifairseq import: the merged LoRA file loads like a released fairseq
    checkpoint, as fairseq's own BARTModel, and gives the delta model's outputs."""
    import subprocess
    import sys

    arch, flags = "lora_attn_bart_base", ["--attn-bn", "4"]
    model, ckpt, _, d = trained_checkpoint(tmp_path, arch, flags)
    merged = tmp_path / "merged.pt"
    export_merge(str(ckpt), str(merged))
    src, lens, prev, _ = random_batch(d)
    torch.save((src, lens, prev), tmp_path / "inputs.pt")
    p = subprocess.run([sys.executable, "-c", VANILLA, str(merged), str(tmp_path / "inputs.pt"),
                        str(tmp_path / "out.pt")], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "fairseq.models.bart.model BARTModel" in p.stdout
    model.eval()
    with torch.no_grad():
        ref = full_logits(model, src, lens, prev)
    assert (torch.load(tmp_path / "out.pt") - ref).abs().max() <= 1e-4


def test_switching_tasks_loads_another_delta_never_another_base(tmp_path):
    """Two deltas trained on one base: one model loads the base once and switches between them."""
    arch, flags = "mam_bart_base", ["--attn-bn", "4", "--ffn-bn", "4", "--mid-dim", "8"]
    (tmp_path / "a").mkdir()
    model_a, ckpt_a, base, d = trained_checkpoint(tmp_path / "a", arch, flags, steps=3)
    # task B: same base file, other data order -> other deltas
    trainer, model_b = make_trainer(arch, flags, d)
    model_b.load_base(str(base))
    for seed in range(3):
        trainer.train_step([toy_sample(d, seed=seed + 10)])
    trainer.consolidate_optimizer()
    ckpt_b = tmp_path / "b.pt"
    trainer.save_checkpoint(str(ckpt_b), {})
    assert os.path.getsize(ckpt_a) < os.path.getsize(base) and os.path.getsize(ckpt_b) < os.path.getsize(base)

    served, _, _ = tiny_model(arch, flags, dictionary=d, seed=5)
    loads = []
    orig = served.load_base
    served.load_base = lambda p: (loads.append(p), orig(p))[1]
    src, lens, prev, _ = random_batch(d)
    for m, ck in ((model_a, ckpt_a), (model_b, ckpt_b), (model_a, ckpt_a)):
        served.load_state_dict(load_checkpoint_file(str(ck))["model"])
        served.eval(), m.eval()
        with torch.no_grad():
            assert torch.equal(full_logits(served, src, lens, prev), full_logits(m, src, lens, prev))
    assert loads == [str(base)], "the base is read once; switching tasks reads only the small deltas"


def test_roberta_hub_predict_from_delta_checkpoint(tmp_path):
    """RoBERTa delta (with its trained head) through fairseq's hub: from_pretrained then .predict()."""
    from fairseq.checkpoint_utils import torch_persistent_save
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.trainer import Trainer

    from tiny import tiny_roberta
    from unifairseq.fairseq.models.roberta import DeltaRobertaModel

    model, task, args = tiny_roberta("lora_attn_roberta_base", ["--attn-bn", "4", "--criterion", "sentence_prediction",
                                                               "--optimizer", "adam", "--lr", "1e-3", "--cpu"])
    d = task.source_dictionary
    base = tmp_path / "base.pt"
    torch_persistent_save({"args": None, "model": {k: v for k, v in model.full_state_dict().items()
                                                   if not is_delta_name(k) and not k.startswith("classification")},
                           "optimizer_history": [], "extra_state": {}, "last_optimizer_state": None}, str(base))
    model.base_path = str(base)
    perturb_deltas(model)
    # the data dir layout sentence_prediction reads its dictionaries from
    for sub, dic in (("input0", d), ("label", task.label_dictionary)):
        (tmp_path / sub).mkdir()
        dic.save(str(tmp_path / sub / "dict.txt"))
    args.data = str(tmp_path)
    cfg = convert_namespace_to_omegaconf(args)
    trainer = Trainer(cfg, task, model, task.build_criterion(cfg.criterion))
    trainer.consolidate_optimizer()
    trainer.save_checkpoint(str(tmp_path / "delta.pt"), {})

    hub = DeltaRobertaModel.from_pretrained(str(tmp_path), checkpoint_file="delta.pt",
                                            data_name_or_path=str(tmp_path), bpe=None)
    hub.eval(), model.eval()
    tokens = torch.tensor([d.bos(), 9, 10, 11, 12, d.eos()])
    with torch.no_grad():
        ref = torch.log_softmax(model(tokens.unsqueeze(0), features_only=True,
                                      classification_head_name="sentence_classification_head")[0], -1)
        got = hub.predict("sentence_classification_head", tokens)
    assert torch.allclose(got, ref, atol=1e-6)
    assert hub.model.base_path == str(base)
