"""Delta checkpoints written before the method registry still load and give the same outputs.

The fixtures (tests/fixtures/pre_registry, made by make_pre_registry.py at commit aeb2221) hold the
delta-only state dicts of every method of the shared table on a tiny BART, and of three RoBERTa
methods with their classification head, plus the logits each model gave then.
"""
from pathlib import Path

import pytest
import torch

from tiny import random_batch, tiny_model, tiny_roberta

FIXTURES = sorted((Path(__file__).parent / "fixtures" / "pre_registry").glob("*.pt"))


def save_plain_base(plain, path):
    from fairseq.checkpoint_utils import torch_persistent_save

    torch_persistent_save({"args": None, "model": {k: v for k, v in plain.state_dict().items()
                                                   if not k.startswith("classification_heads.")},
                           "optimizer_history": [], "extra_state": {}, "last_optimizer_state": None}, str(path))


def test_every_method_has_a_fixture():
    assert len(FIXTURES) == 24


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_pre_registry_delta_loads_with_same_outputs(path, tmp_path):
    fx = torch.load(path)
    roberta = "roberta" in fx["arch"]
    plain, task, _ = (tiny_roberta if roberta else tiny_model)("roberta_base" if roberta else "bart_base", seed=0)
    save_plain_base(plain, tmp_path / "base.pt")
    model, _, _ = (tiny_roberta if roberta else tiny_model)(fx["arch"], fx["flags"], seed=3)
    model.delta_base = str(tmp_path / "base.pt")
    model.load_state_dict(fx["delta"])  # base by --delta-base, fingerprint checked, then the deltas
    model.eval()
    src, lens, prev, _ = random_batch(task.source_dictionary)
    with torch.no_grad():
        if roberta:
            out = model(src, features_only=True, classification_head_name="sentence_classification_head")[0]
        else:
            out = model(src, lens, prev)[0]
    assert torch.allclose(out, fx["logits"], atol=1e-5), (out - fx["logits"]).abs().max()
    assert not torch.allclose(out, plain.eval()(src, features_only=True,
                                                classification_head_name="sentence_classification_head")[0]
                              if roberta else plain.eval()(src, lens, prev)[0], atol=1e-4)


BANK_FIXTURE = Path(__file__).parent / "fixtures" / "bank_687549e"  # made by fixtures/make_bank_fixture.py


def test_bank_checkpoint_written_before_the_one_set_of_layers_keeps_its_outputs():
    """A bank checkpoint written by 687549e's code (its own bank layers, before the bank became the delta
    layers' mixed-batch path) loads into today's bank_bart_base: the teacher-forced logits of its mixed
    batch and the beam-3 hypotheses (tokens, positional scores) are bitwise those it gave then."""
    import sys

    sys.path.insert(0, str(BANK_FIXTURE.parent))
    from make_bank_fixture import DELTAS, IDS
    from fairseq.sequence_generator import SequenceGenerator
    from tiny import random_batch, tiny_dict, tiny_model
    from unifairseq.fairseq.checkpoint_io import load_checkpoint_file

    d = tiny_dict()
    state = load_checkpoint_file(str(BANK_FIXTURE / "bank.pt"))
    assert not any(not k.startswith("delta_bank.") for k in state["model"] if "version" not in k and "unifairseq" not in k)
    bank, _, _ = tiny_model("bank_bart_base", ["--bank-deltas", DELTAS,
                                               "--delta-base", str(BANK_FIXTURE / "base" / "model.pt")], dictionary=d)
    bank.load_state_dict(state["model"])
    bank.eval()
    want = torch.load(BANK_FIXTURE / "expected.pt", weights_only=True)
    src, lens, prev, _ = random_batch(d, bsz=len(IDS))
    ids = torch.tensor(IDS)
    with torch.no_grad():
        logits = bank(src, lens, prev, delta_ids=ids)[0]
        hypos = SequenceGenerator([bank], d, beam_size=3, max_len_b=6, min_len=2).forward(
            {"net_input": {"src_tokens": src, "src_lengths": lens, "delta_ids": ids}})
    assert torch.equal(logits, want["logits"])  # bitwise
    for b, hs in enumerate(hypos):
        assert [h["tokens"].tolist() for h in hs] == [t.tolist() for t in want["tokens"][b]], b
        for h, s in zip(hs, want["scores"][b]):
            assert torch.equal(h["positional_scores"], s), b
