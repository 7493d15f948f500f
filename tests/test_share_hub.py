"""The hub with shared deltas: from_pretrained(base, delta=DIR) with the base by name, switching deltas
on the loaded base (same plan and another plan) without re-reading the base file, RoBERTa's head."""
from __future__ import annotations

import argparse
import os

import pytest
import torch

from ckpthelp import no_unpickling_of, save_plain_base
from tiny import full_logits, perturb_deltas, random_batch, tiny_dict
from trainhelp import make_trainer, toy_sample
from unifairseq.core.modules import is_delta_name
from unifairseq.fairseq.checkpoint_io import load_checkpoint_file
from unifairseq.fairseq.deltafolder import load_delta
from unifairseq.tools.export import export_inference

SMALL = ["--attn-bn", "5", "--ffn-bn", "6", "--mid-dim", "16"]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("UNIFAIRSEQ_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("UNIFAIRSEQ_BASES", str(tmp_path / "bases"))


def delta_on(base, tmp_path, tag, arch, flags, d, steps=2, seed=0):
    trainer, model = make_trainer(arch, flags, d)
    model.load_base(str(base))
    perturb_deltas(model, seed=seed)  # moved off init, then a few real updates
    for _ in range(steps):
        trainer.train_step([toy_sample(d)])
    ckpt = tmp_path / f"{tag}.pt"
    trainer.consolidate_optimizer()
    trainer.save_checkpoint(str(ckpt), {})
    out = tmp_path / tag
    export_inference(str(ckpt), str(out))
    return model.eval(), out


def data_dir(tmp_path, d):
    data = tmp_path / "data"
    data.mkdir()
    for lang in ("src", "tgt"):
        d.save(str(data / f"dict.{lang}.txt"))
    return data


def test_hub_by_name_and_switching_deltas(tmp_path):
    from unifairseq.fairseq.models.bart import DeltaBARTModel

    d = tiny_dict()
    base = tmp_path / "bases" / "tiny.bart" / "model.pt"
    save_plain_base(base, "lora_attn_bart_base", d, "args")
    refs = {tag: delta_on(base, tmp_path, tag, arch, flags, d, seed=i) for i, (tag, arch, flags) in enumerate([
        ("lora1", "lora_attn_bart_base", SMALL), ("lora2", "lora_attn_bart_base", SMALL),
        ("mam", "mam_bart_base", SMALL), ("bitfit", "bitfit_bart_base", [])])}
    data = data_dir(tmp_path, d)
    src, lens, prev, _ = random_batch(d)
    base_sd = load_checkpoint_file(str(base))["model"]

    with no_unpickling_of(tmp_path / "lora1") as seen:
        hub = DeltaBARTModel.from_pretrained("tiny.bart", delta=str(refs["lora1"][1]), data_name_or_path=str(data),
                                             bpe=None, source_lang="src", target_lang="tgt")
        hub.eval()
        for model, _ in refs.values():  # as the hub prepares its model (beamable cross-attention)
            model.prepare_for_inference_(hub.cfg)

        def logits():
            with torch.no_grad():
                return full_logits(hub.model, src, lens, prev)

        def hyps():
            return [h[0]["tokens"].tolist() for h in hub.generate([src[0], src[1]], beam=3, max_len_b=6)]

        first = hyps()
        order = ["lora1", "lora2", "mam", "bitfit", "lora2", "lora1"]
        for tag in order:
            model, folder = refs[tag]
            kept = hub.model
            load_delta(hub, str(folder))
            same_plan = tag.startswith("lora") and kept.delta_plan.cfg.attn_mode == "lora"
            assert (hub.model is kept) == same_plan, tag  # copied in place, or rebuilt for another plan
            with torch.no_grad():
                assert torch.equal(logits(), full_logits(model, src, lens, prev)), tag
            for n, p in hub.model.named_parameters():  # the base stays frozen under every plan
                assert p.requires_grad == hub.model.delta_plan.is_trainable(n), n
        assert hyps() == first, "back on the first delta: its own hypotheses exactly"
        own = hub.model.full_state_dict()
        assert all(torch.equal(own[k], v) for k, v in base_sd.items() if not k.endswith("version")), \
            "the base weights are bitwise those of the file after MAM, BitFit (in place) and back"
    assert [os.path.realpath(p) for p in seen] == [os.path.realpath(base)], "the base file is read once"


def test_roberta_hub_with_head_from_shared_delta(tmp_path):
    from ckpthelp import trained_roberta_lora
    from unifairseq.fairseq.models.roberta import DeltaRobertaModel

    model, task, _, base, _, data = trained_roberta_lora(tmp_path, "roberta.tiny")
    d = task.source_dictionary
    out = tmp_path / "shared"
    info = export_inference(str(tmp_path / "delta.pt"), str(out))
    assert info["config"]["heads"] == {"sentence_classification_head": {"num_classes": 2, "inner_dim": 32}}
    assert info["config"]["family"] == "roberta" and "target" not in info["config"]["dictionary"]

    with no_unpickling_of(out) as seen:
        hub = DeltaRobertaModel.from_pretrained(str(base.parent), delta=str(out),
                                                data_name_or_path=str(data / "input0"), bpe=None)
    hub.eval(), model.eval()
    assert seen == [os.path.realpath(base)]
    tokens = torch.tensor([d.bos(), 9, 10, 11, 12, d.eos()])
    with torch.no_grad():
        ref = torch.log_softmax(model(tokens.unsqueeze(0), features_only=True,
                                      classification_head_name="sentence_classification_head")[0], -1)
        got = hub.predict("sentence_classification_head", tokens)
    assert torch.equal(got, ref)
    from unifairseq.fairseq.checkpoint_io import load_checkpoint_file

    plain_sd = load_checkpoint_file(str(base))["model"]  # the base file, read weights-only
    own = hub.model.full_state_dict()
    assert all(torch.equal(own[k], v) for k, v in plain_sd.items() if not is_delta_name(k))


def test_hub_serves_more_deltas_per_sentence(tmp_path):
    """from_pretrained(base, delta=DIR, deltas={...}): one hub, its own delta and more on the same base;
    each sentence of a mixed generate equals its delta's own hub; add/remove and the refusals."""
    from unifairseq.core.bank import BankError
    from unifairseq.fairseq.hub import DeltaBARTHub
    from unifairseq.fairseq.models.bart import DeltaBARTModel

    d = tiny_dict()
    base = tmp_path / "bases" / "tiny.bart" / "model.pt"
    save_plain_base(base, "lora_attn_bart_base", d, "args")
    folders = {tag: delta_on(base, tmp_path, tag, arch, flags, d, seed=i)[1] for i, (tag, arch, flags) in enumerate([
        ("lora1", "lora_attn_bart_base", SMALL), ("mam", "mam_bart_base", SMALL),
        ("pfeiffer", "pfeiffer_bart_base", SMALL)])}
    data = data_dir(tmp_path, d)
    kw = dict(data_name_or_path=str(data), bpe=None, source_lang="src", target_lang="tgt")
    hub = DeltaBARTModel.from_pretrained("tiny.bart", delta=str(folders["lora1"]),
                                         deltas={"mam": str(folders["mam"])}, **kw).eval()
    assert isinstance(hub, DeltaBARTHub) and hub.delta_names == ["lora1", "mam"]
    hub.add_delta("pfeiffer", str(folders["pfeiffer"]))
    sentences = [torch.tensor([d.index(f"w{i + j}") for j in range(3 + i % 3)] + [d.eos()]) for i in range(6)]
    names = ["mam", None, "pfeiffer", "lora1", "mam", "pfeiffer"]
    got = hub.generate(sentences, beam=3, max_len_b=6, deltas=names)
    for tag in folders:
        alone = DeltaBARTModel.from_pretrained("tiny.bart", delta=str(folders[tag]), **kw).eval()
        assert isinstance(alone, DeltaBARTHub) and alone.delta_names == [tag]
        for s, n, hyps in zip(sentences, names, got):
            if (n or "lora1") == tag:
                ref = alone.generate([s], beam=3, max_len_b=6)[0]
                assert [h["tokens"].tolist() for h in hyps] == [h["tokens"].tolist() for h in ref], (n, s)
                assert [float(h["score"]) for h in hyps] == pytest.approx([float(h["score"]) for h in ref],
                                                                          abs=1e-5)
    hub.remove_delta("pfeiffer")
    with pytest.raises(BankError, match="no delta named 'pfeiffer'"):
        hub.generate(sentences[:1], deltas=["pfeiffer"])
    with pytest.raises(BankError, match="never the model's own"):
        hub.remove_delta("lora1")
    with pytest.raises(BankError, match="2 entries for 1 sentences"):
        hub.generate(sentences[:1], deltas=["mam", "mam"])


def test_load_hub_base_by_name_with_deltas(tmp_path):
    """fairseq.bank.load_hub(NAME, {...}): the base by name, deltas as folders and .pt files, each sentence of
    a mixed generate equal to its delta's own hub, None the plain base; an unknown base is one line."""
    from unifairseq.core.bank import BankError
    from unifairseq.fairseq.bank import load_hub
    from unifairseq.fairseq.models.bart import DeltaBARTModel

    d = tiny_dict()
    base = tmp_path / "bases" / "tiny.bart" / "model.pt"
    plain = save_plain_base(base, "lora_attn_bart_base", d, "args")
    folders = {tag: delta_on(base, tmp_path, tag, arch, flags, d, seed=i)[1] for i, (tag, arch, flags) in enumerate([
        ("lora1", "lora_attn_bart_base", SMALL), ("mam", "mam_bart_base", SMALL)])}
    data = data_dir(tmp_path, d)
    kw = dict(bpe=None, source_lang="src", target_lang="tgt")
    hub = load_hub("tiny.bart", {"lora1": str(folders["lora1"]), "mam": str(tmp_path / "mam.pt")},
                   data=str(data), **kw)
    assert hub.delta_names == ["lora1", "mam"]
    sentences = [torch.tensor([d.index(f"w{i + j}") for j in range(3 + i % 2)] + [d.eos()]) for i in range(4)]
    names = ["mam", "lora1", None, "mam"]
    got = hub.generate(sentences, beam=2, max_len_b=5, deltas=names)
    plain_hub = hub_of_plain(plain.eval(), data, kw)
    for tag in [None, *folders]:
        alone = (plain_hub if tag is None else
                 DeltaBARTModel.from_pretrained("tiny.bart", delta=str(folders[tag]), data_name_or_path=str(data),
                                                **kw).eval())
        for s, n, hyps in zip(sentences, names, got):
            if n == tag:
                ref = alone.generate([s], beam=2, max_len_b=5)[0]
                assert [h["tokens"].tolist() for h in hyps] == [h["tokens"].tolist() for h in ref], (n, s)
    with pytest.raises(BankError, match="nowhere.bart"):
        load_hub("nowhere.bart", {}, data=str(data), **kw)


def hub_of_plain(model, data, kw):
    from fairseq import tasks
    from unifairseq.fairseq.hub import DeltaBARTHub

    args = argparse.Namespace(**vars(model.args))
    args.data = str(data)
    for k, v in kw.items():
        setattr(args, k, v)
    return DeltaBARTHub.from_model(model, tasks.setup_task(args))
