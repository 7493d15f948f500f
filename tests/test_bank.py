"""The delta bank: every method of the shared table, mixed with others in one batch, equals each
sentence decoded alone on its own single-delta model (beam search with reordering, incremental
states, teacher-forced forward), gradients stay per delta, the base stays bitwise unchanged."""
import functools

import pytest
import torch
from fairseq.sequence_generator import SequenceGenerator

from bankhelp import ID_PATTERNS, TWIN, make_bank, mixed_batch, plain_base
from methods import IDS, METHODS
from tiny import tiny_model

TOL = 1e-5


def companions(row):
    """The row's method twice (same structure: the per-sample and per-delta vmap paths), other methods,
    and a prefix (or prompt) of another length."""
    first = "dora_attn" if row == "lora_attn" else "lora_attn"
    second = "houlsby" if row == "pfeiffer" else "pfeiffer"
    return [row, row + TWIN, first, second, "prompt_l3" if row == "prompt" else "prefix_l3"]


@functools.lru_cache(maxsize=None)
def case(row):
    return make_bank(companions(row))


@functools.lru_cache(maxsize=None)
def plain_model():
    base, _ = plain_base()
    m, _, _ = tiny_model("bart_base")
    m.load_state_dict(base)
    return m.eval()


def reference(bank, singles, i):
    return plain_model() if i < 0 else singles[bank.bank.names[i]]


def assert_base_unchanged(bank):
    base, _ = plain_base()
    own = torch.nn.Module.state_dict(bank)
    for k, v in base.items():
        assert torch.equal(own[k], v), f"base tensor {k} changed"


@pytest.mark.parametrize("pattern", list(ID_PATTERNS))
@pytest.mark.parametrize("name,arch,flags,identity", METHODS, ids=IDS)
def test_mixed_forward_equals_single(name, arch, flags, identity, pattern):
    bank, singles = case(name)
    d, src, lens, prev, _, ids = mixed_batch(pattern=pattern)
    with torch.no_grad():
        out, _ = bank(src, lens, prev, delta_ids=ids)
        for b in range(src.size(0)):
            m = reference(bank, singles, int(ids[b]))
            keep = int(lens[b])
            ref, _ = m(src[b:b + 1, -keep:], lens[b:b + 1], prev[b:b + 1])
            err = float((out[b] - ref[0]).abs().max())
            assert err < TOL, (name, b, err)
    assert_base_unchanged(bank)


@pytest.mark.parametrize("name,arch,flags,identity", METHODS, ids=IDS)
def test_mixed_beam_search_equals_alone(name, arch, flags, identity):
    """Beam 3 over a mixed batch (reordering, incremental states, beamable cross-attention) gives every
    sentence the hypotheses and positional scores of decoding it alone with its own delta."""
    bank, singles = case(name)
    d, src, lens, _, _, ids = mixed_batch(pattern="one_each")
    gen = SequenceGenerator([bank], d, beam_size=3, max_len_b=6, min_len=2)
    with torch.no_grad():
        hypos = gen.forward({"net_input": {"src_tokens": src, "src_lengths": lens, "delta_ids": ids}})
        for b in range(src.size(0)):
            m = singles[bank.bank.names[int(ids[b])]]
            keep = int(lens[b])
            alone = SequenceGenerator([m], d, beam_size=3, max_len_b=6, min_len=2).forward(
                {"net_input": {"src_tokens": src[b:b + 1, -keep:], "src_lengths": lens[b:b + 1]}})[0]
            assert len(alone) == len(hypos[b]) == 3
            for h, r in zip(hypos[b], alone):
                assert torch.equal(h["tokens"], r["tokens"]), (name, b)
                err = float((h["positional_scores"] - r["positional_scores"]).abs().max())
                assert err < TOL, (name, b, err)
    assert_base_unchanged(bank)


def test_batch_ordered_by_delta_once():
    """by_delta orders every per-sentence tensor of a sample by delta (stable), restore_order puts
    per-sentence results back; an ordered batch with as many rows per delta is laid out by views."""
    from unifairseq.core.bank import by_delta, restore_order
    from unifairseq.core.bank_group import Group

    src = torch.arange(12).view(6, 2)
    sample = {"id": torch.tensor([10, 11, 12, 13, 14, 15]), "nsentences": 6, "target": src + 100,
              "net_input": {"src_tokens": src, "src_lengths": torch.full((6,), 2),
                            "delta_ids": torch.tensor([2, 0, 2, -1, 0, 1])}}
    ordered, order = by_delta(sample)
    assert order.tolist() == [3, 1, 4, 5, 0, 2]
    assert ordered["net_input"]["delta_ids"].tolist() == [-1, 0, 0, 1, 2, 2]
    assert ordered["id"].tolist() == [13, 11, 14, 15, 10, 12] and ordered["nsentences"] == 6
    assert torch.equal(ordered["net_input"]["src_tokens"], src[order])
    assert torch.equal(ordered["target"], src[order] + 100)
    assert restore_order(ordered["id"].tolist(), order) == sample["id"].tolist()
    assert by_delta(ordered)[1] is None  # already ordered: left as it is
    lin = torch.nn.Linear(2, 2)
    group = Group([(0, lin), (1, torch.nn.Linear(2, 2)), (2, torch.nn.Linear(2, 2))], 3, torch.device("cpu"))
    assert group.layout(torch.tensor([0, 0, 1, 1, 2, 2]))[0] == "blocks"
    assert group.layout(torch.tensor([0, 1, 0, 1, 2, 2]))[0] == "padded"  # interleaved: gathered
    assert group.layout(torch.tensor([0, 0, 0, 1, 2, 2]))[0] == "padded"  # unequal rows per delta


@pytest.mark.parametrize("name,arch,flags,identity", METHODS, ids=IDS)
def test_mixed_incremental_equals_full(name, arch, flags, identity):
    bank, _ = case(name)
    bank.set_beam_size(1)  # a beam search before (same cached bank) left the beamable layout at 3
    d, src, lens, prev, _, ids = mixed_batch()
    with torch.no_grad():
        full = bank.get_normalized_probs((bank(src, lens, prev, delta_ids=ids)[0], None), log_probs=True)
        enc = bank.encoder(src, src_lengths=lens, delta_ids=ids)
        state, steps = {}, []
        for t in range(prev.size(1)):
            out, _ = bank.decoder(prev[:, : t + 1], encoder_out=enc, incremental_state=state)
            steps.append(bank.get_normalized_probs((out, None), log_probs=True)[:, -1])
    err = float((torch.stack(steps, dim=1) - full).abs().max())
    assert err < TOL, err


def nll_sum(model, src, lens, prev, tgt, **kw):
    out, _ = model(src, lens, prev, **kw)
    lp = model.get_normalized_probs((out, None), log_probs=True)
    return -lp.gather(-1, tgt.unsqueeze(-1)).sum()


@pytest.mark.parametrize("ids", [[0, 1, 0, 2, 1], [1, 0, 2, 3, -1]], ids=["shared", "one_each"])
@pytest.mark.parametrize("name,arch,flags,identity", METHODS, ids=IDS)
def test_gradients_stay_per_delta(name, arch, flags, identity, ids):
    """One mixed batch, sum-reduced loss: each delta's gradient equals its single-delta model's
    gradient on its own sentences alone; a delta without sentences gets zero; the base none."""
    bank, singles = make_bank(companions(name))
    d, src, lens, prev, tgt, _ = mixed_batch()
    ids = torch.tensor(ids)  # some deltas of the bank have no sentence (and -1: a base sentence)
    bank.zero_grad()
    nll_sum(bank, src, lens, prev, tgt, delta_ids=ids).backward()
    for i, dname in enumerate(bank.bank.names):
        m = singles[dname]
        m.zero_grad()
        rows = (ids == i).nonzero().squeeze(1)
        for b in rows.tolist():
            keep = int(lens[b])
            nll_sum(m, src[b:b + 1, -keep:], lens[b:b + 1], prev[b:b + 1], tgt[b:b + 1]).backward()
        ref = {k: p.grad for k, p in m.named_parameters() if p.requires_grad}
        got = dict(bank.delta_bank[dname].named_parameters())
        assert set(ref) == set(got), (dname, set(ref) ^ set(got))
        for k, g in ref.items():
            gb = got[k].grad
            if rows.numel() == 0:
                assert gb is None or not gb.abs().any(), (dname, k)
                continue
            g = torch.zeros_like(gb) if g is None else g
            err = float((gb - g).abs().max())  # float32 sums in another order: 1e-5 of the gradient's scale
            assert err <= TOL * max(1.0, float(g.abs().max())), (dname, k, err)
    for n, p in bank.named_parameters():
        if not n.startswith("delta_bank."):
            assert p.grad is None, n
    with torch.no_grad():
        for p in bank.delta_bank.parameters():
            if p.grad is not None:
                p.sub_(0.1 * p.grad)  # an update of every delta leaves the base as it was
    assert_base_unchanged(bank)


@pytest.mark.parametrize("kind", ["lora", "adapter_parallel", "adapter_sequential", "adapter_learnable"])
def test_blocks_forward_equals_the_generic_per_delta_call(kind):
    """A method's own batched math for a batch ordered by delta (blocks_forward) gives the outputs and
    the gradients of the generic vmapped per-delta call of its forward."""
    from unifairseq.core.bank_group import Group
    from unifairseq.core.methods.adapter import Adapter
    from unifairseq.core.methods.lora import LoRA

    torch.manual_seed(0)
    n, width, T, C = 3, 4, 5, 8

    def make():
        if kind == "lora":
            m = LoRA(C, C, r=2, alpha=4.0)
        else:
            m = Adapter(C, 3, "sequential" if kind == "adapter_sequential" else "parallel",
                        "learnable_scalar" if kind == "adapter_learnable" else 2.0)
        for p in m.parameters():
            torch.nn.init.normal_(p, std=0.3)
        return m

    members = [(i, make()) for i in range(n)]
    W, b = torch.randn(C, C), torch.randn(C)
    h = torch.randn(T, n * width, C, requires_grad=True)
    x = torch.randn(T, n * width, C, requires_grad=True)
    local = torch.arange(n).repeat_interleave(width)
    args, dims = ((h, W, b), (1, None, None)) if kind == "lora" else ((h, x), (1, 1))
    with torch.no_grad():  # the method's own path is taken (not the fallback it may choose)
        laid = [a if d is None else a.unflatten(1, (n, width)).movedim(1, 0).contiguous() for a, d in zip(args, dims)]
        stacked = {k: torch.stack([dict(m.named_parameters())[k] for _, m in members]) for k, _ in
                   members[0][1].named_parameters()}
        assert members[0][1].blocks_forward(stacked, *laid) is not None
    outs, grads = [], []
    for fast in (True, False):
        group = Group(members, n, torch.device("cpu"))
        layout = group.layout(local)
        assert layout[0] == "blocks"
        if not fast:
            group.template.blocks_forward = lambda *a: None  # the generic path
        y = group.call(local, args, dims, 1, layout)
        y.square().sum().backward()
        outs.append(y.detach())
        grads.append([p.grad.clone() for _, m in members for p in m.parameters()] + [h.grad.clone()])
        for _, m in members:
            m.zero_grad()
        h.grad = x.grad = None
    assert float((outs[0] - outs[1]).abs().max()) < 1e-5
    for g0, g1 in zip(*grads):
        assert float((g0 - g1).abs().max()) < 1e-4
