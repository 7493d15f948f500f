"""Every method of the shared table through the same checks."""
import io

import pytest
import torch
from fairseq.sequence_generator import SequenceGenerator

from methods import IDS, METHODS, PROJECTION_MERGES
from ckpthelp import save_base_checkpoint
from tiny import full_logits, perturb_deltas, random_batch, tiny_dict, tiny_model
from unifairseq.core.accounting import stored_delta_weights
from unifairseq.core.modules import DeltaLinear, is_delta_name


def base_twin(model):
    """fairseq's plain BART with the same base weights."""
    plain, _, _ = tiny_model("bart_base")
    plain.load_state_dict({k: v for k, v in model.full_state_dict().items() if not is_delta_name(k)}, strict=True)
    return plain.eval()


@pytest.mark.parametrize("name,arch,flags,identity", METHODS, ids=IDS)
def test_identity_at_init(name, arch, flags, identity):
    model, task, _ = tiny_model(arch, flags)
    model.eval()
    src, lens, prev, _ = random_batch(task.source_dictionary)
    with torch.no_grad():
        diff = (full_logits(model, src, lens, prev) - full_logits(base_twin(model), src, lens, prev)).abs().max()
    print(name, float(diff))
    if identity:
        assert diff < 2e-6, f"{name} should start as the base model, max diff {diff}"
    else:
        assert diff > 1e-5, f"{name} starts with a non-zero Δh by its math, but the output did not change"


@pytest.mark.parametrize("name,arch,flags,identity", METHODS, ids=IDS)
def test_incremental_equals_full(name, arch, flags, identity):
    model, task, _ = tiny_model(arch, flags)
    perturb_deltas(model)
    model.eval()
    d = task.source_dictionary
    src, lens, prev, _ = random_batch(d)
    with torch.no_grad():
        full = model.get_normalized_probs((full_logits(model, src, lens, prev), None), log_probs=True)
        enc = model.encoder(src, src_lengths=lens)
        state = {}
        steps = []
        for t in range(prev.size(1)):
            out, _ = model.decoder(prev[:, : t + 1], encoder_out=enc, incremental_state=state)
            steps.append(model.get_normalized_probs((out, None), log_probs=True)[:, -1])
    inc = torch.stack(steps, dim=1)
    assert torch.allclose(inc, full, atol=1e-5), (inc - full).abs().max()


@pytest.mark.parametrize("name,arch,flags,identity", METHODS, ids=IDS)
def test_beam_search_scores_match_full_forward(name, arch, flags, identity):
    """Beam search (incremental, with reordering) gives the scores a full forward gives its tokens."""
    model, task, _ = tiny_model(arch, flags)
    perturb_deltas(model, std=0.2)
    model.eval()
    d = task.target_dictionary
    src, lens, _, _ = random_batch(d)
    gen = SequenceGenerator([model], d, beam_size=3, max_len_b=6, min_len=2)
    with torch.no_grad():
        hypos = gen.forward({"net_input": {"src_tokens": src, "src_lengths": lens}})
        for b, beams in enumerate(hypos):
            assert len(beams) == 3
            for h in beams:
                tokens = h["tokens"].unsqueeze(0)
                prev = torch.cat([tokens.new_full((1, 1), d.eos()), tokens[:, :-1]], dim=1)
                keep = lens[b]
                lp = model.get_normalized_probs(
                    (full_logits(model, src[b:b + 1, -keep:], lens[b:b + 1], prev), None), log_probs=True)
                ref = lp[0].gather(-1, tokens[0].unsqueeze(-1)).squeeze(-1)
                assert torch.allclose(h["positional_scores"], ref, atol=1e-4), \
                    (h["positional_scores"] - ref).abs().max()


@pytest.mark.parametrize("name,arch,flags,identity", METHODS, ids=IDS)
def test_delta_save_load_round_trip(name, arch, flags, identity, tmp_path):
    """Delta state dict (what fairseq writes) -> fresh model -> base loaded from its file -> same outputs."""
    model, task, _ = tiny_model(arch, flags)
    perturb_deltas(model)
    base = tmp_path / "base.pt"
    save_base_checkpoint(model, base)
    model.base_path = str(base)  # as if the base had come from --restore-file base.pt
    sd = model.state_dict()
    assert all(k.startswith("unifairseq_meta.") or p_trainable(model, k) for k in sd), "only trained tensors saved"
    buf = io.BytesIO()
    torch.save(sd, buf)
    fresh, _, _ = tiny_model(arch, flags, seed=123)  # other random base and deltas
    buf.seek(0)
    fresh.load_state_dict(torch.load(buf))  # loads base.pt by the recorded path, then the deltas
    model.eval(), fresh.eval()
    src, lens, prev, _ = random_batch(task.source_dictionary)
    with torch.no_grad():
        assert torch.equal(full_logits(model, src, lens, prev), full_logits(fresh, src, lens, prev))
    assert fresh.base_path == str(base)


def p_trainable(model, key):
    return dict(model.named_parameters())[key].requires_grad


@pytest.mark.parametrize("name,arch,flags,identity", METHODS, ids=IDS)
def test_formula_count_matches_built_model(name, arch, flags, identity):
    model, _, _ = tiny_model(arch, flags)
    assert stored_delta_weights(model, model.encoder.delta) == model.delta_report["formula"]
    # trainable = exactly the parameters that require grad, and nothing else has grad enabled
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable, name
    plan = model.delta_plan  # the registry's word on what trains: delta tensors, or base parameters in place
    in_place = [n for n in trainable if not is_delta_name(n)]
    assert all(plan.is_trainable(n) for n in trainable)
    assert bool(in_place) == any(s.site == "bias" for s in plan.specs)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == model.delta_report["trainable"]


@pytest.mark.parametrize("name,arch,flags,identity", PROJECTION_MERGES, ids=[m[0] for m in PROJECTION_MERGES])
def test_merge_round_trip(name, arch, flags, identity):
    """Every projection delta (LoRA, DoRA, (IA)³) merged into its weight: the same outputs as
    unmerged, a plain BART with the merged weights gives them too, and unmerging restores W."""
    model, task, _ = tiny_model(arch, flags)
    perturb_deltas(model)
    src, lens, prev, _ = random_batch(task.source_dictionary)
    lora = [m for m in model.modules() if isinstance(m, DeltaLinear) and m.delta is not None]
    assert lora
    before = {id(m): m.weight.detach().clone() for m in lora}
    # train mode with dropout off: fairseq's attention fast path must not bypass LoRA on W_q/W_v
    for mode in ("train", "eval"):
        getattr(model, mode)()
        for m in model.modules():
            if hasattr(m, "p") and isinstance(getattr(m, "p"), float):
                m.p = 0.0
        with torch.no_grad():
            unmerged = full_logits(model, src, lens, prev)
            for m in lora:
                m.merge()
            merged = full_logits(model, src, lens, prev)
            base = full_logits(base_twin(model), src, lens, prev)  # base_twin holds the merged W
            for m in lora:
                m.unmerge()
        assert torch.allclose(unmerged, merged, atol=1e-5), (unmerged - merged).abs().max()
        assert torch.allclose(merged, base, atol=1e-5)  # merged: a plain fairseq BART computes it
        for m in lora:
            assert torch.allclose(m.weight, before[id(m)], atol=1e-6)


def test_prefix_mlp_runs_once_per_forward_in_training_with_per_layer_gradients():
    """Training: one reparametrization-MLP pass per encoder/decoder forward, shared by its layers,
    with the same loss and gradients as the per-layer computation (used under activation
    checkpointing)."""
    from unifairseq.core.methods.prefix import PrefixProvider

    d = tiny_dict()
    model, _, _ = tiny_model("mam_bart_base", dictionary=d)
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout) or hasattr(m, "p"):
            m.p = 0.0
    src, lengths, prev, tgt = random_batch(d)
    providers = [m for m in model.modules() if isinstance(m, PrefixProvider)]
    assert len(providers) == 3 and all(p.mid_dim > 0 for p in providers)  # encoder, decoder self, cross

    def loss_and_grads():
        model.zero_grad(set_to_none=True)
        logits = model(src, lengths, prev)[0]
        loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), tgt.view(-1))
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    calls = []
    hooks = [p.mlp_up.register_forward_hook(lambda *a: calls.append(1)) for p in providers]
    loss, grads = loss_and_grads()
    assert len(calls) == 3, f"the MLP ran {len(calls)} times in one forward (expected once per provider)"
    assert all(p._pass is None for p in providers)  # nothing left over after the forward

    for p in providers:  # reference: every layer runs its own rows of the MLP
        p.begin_pass = lambda: None
    calls.clear()
    ref_loss, ref_grads = loss_and_grads()
    for h in hooks:
        h.remove()
    assert len(calls) == 0  # per-layer rows go through F.linear, not the module
    assert torch.allclose(loss, ref_loss, atol=1e-6)
    assert grads.keys() == ref_grads.keys() and any("mlp_up" in n for n in grads)
    for n in grads:
        assert torch.allclose(grads[n], ref_grads[n], atol=1e-6, rtol=1e-5), n


def test_output_projection_of_delta_decoder_equals_fairseq():
    """The delta decoder applies the (frozen) output projection to a 2-D view: the same logits."""
    d = tiny_dict()
    model, _, _ = tiny_model("lora_attn_bart_base", dictionary=d)
    model.eval()
    src, lengths, prev, _ = random_batch(d)
    with torch.no_grad():
        feats = model.decoder.extract_features(prev, model.encoder(src, lengths))[0]  # B x T x C
        ours = model.decoder.output_layer(feats)
        ref = torch.nn.functional.linear(feats, model.decoder.output_projection.weight)
    assert ours.shape == ref.shape and torch.allclose(ours, ref, atol=1e-6)


def test_dora_magnitude_starts_from_the_base_that_is_loaded():
    """DoRA's m = ||W||_row of the *pretrained* weight: a base loaded into a fresh DoRA model the way
    --restore-file does (fairseq's load_state_dict with the missing delta tensors filled) sets m from
    that base, so the model starts as exactly that base -- not as the random weights it was built with."""
    model, task, _ = tiny_model("dora_attn_bart_base", ["--attn-bn", "4"], seed=0)
    plain, _, _ = tiny_model("bart_base", seed=5)  # another base
    model.load_state_dict(plain.state_dict(), strict=True)
    q = model.encoder.layers[0].self_attn.q_proj
    assert torch.allclose(q.delta.m, q.weight.norm(dim=1))
    src, lens, prev, _ = random_batch(task.source_dictionary)
    model.eval(), plain.eval()
    with torch.no_grad():
        assert torch.allclose(full_logits(model, src, lens, prev), full_logits(plain, src, lens, prev), atol=1e-5)
