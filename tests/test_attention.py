"""The delta attention against fairseq's attention and against the paper's formulas."""
import math

import pytest
import torch
import torch.nn.functional as F
from fairseq.modules.multihead_attention import MultiheadAttention

from unifairseq.fairseq.attention import DeltaMultiheadAttention
from unifairseq.core.config import DeltaConfig
from unifairseq.core.plan import DeltaPlan
from unifairseq.core.methods.prefix import PrefixProvider

C, H, L_PREFIX = 16, 4, 5


def make_pair(delta: DeltaConfig, prefix=None, **kw):
    torch.manual_seed(0)
    ref = MultiheadAttention(C, H, **kw).eval()
    kind = "cross" if kw.get("encoder_decoder_attention") else "self"
    ours = DeltaMultiheadAttention(C, H, plan=DeltaPlan(delta), kind=kind, layer_idx=0, prefix=prefix, **kw).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def inputs(T=6, S=7, B=3):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(T, B, C, generator=g)
    mem = torch.randn(S, B, C, generator=g)
    kpm = torch.zeros(B, S, dtype=torch.bool)
    kpm[1, :2] = True  # left padding in one sentence
    kpm[2, :4] = True
    return x, mem, kpm


@pytest.mark.parametrize("kind", ["self", "cross"])
def test_no_delta_matches_fairseq_full_and_incremental(kind):
    kw = dict(self_attention=True) if kind == "self" else dict(encoder_decoder_attention=True)
    ref, ours = make_pair(DeltaConfig().validate(), **kw)
    x, mem, kpm = inputs()
    T = x.size(0)
    if kind == "self":
        causal = torch.triu(torch.full((T, T), float("-inf")), 1)
        args = dict(query=x, key=x, value=x, attn_mask=causal)
    else:
        args = dict(query=x, key=mem, value=mem, key_padding_mask=kpm)
    with torch.no_grad():
        r, rw = ref(**args)  # fairseq's fast path (F.multi_head_attention_forward)
        o, ow = ours(**args)
    assert torch.allclose(r, o, atol=1e-6)
    assert torch.allclose(rw, ow, atol=1e-6)
    # incremental, step by step, against fairseq's incremental path
    sr, so, outs_r, outs_o = {}, {}, [], []
    with torch.no_grad():
        for t in range(T):
            xt = x[t: t + 1]
            if kind == "self":
                a = dict(query=xt, key=xt, value=xt)
            else:
                a = dict(query=xt, key=mem, value=mem, key_padding_mask=kpm, static_kv=True)
            outs_r.append(ref(incremental_state=sr, **a)[0])
            outs_o.append(ours(incremental_state=so, **a)[0])
    assert torch.allclose(torch.cat(outs_r), torch.cat(outs_o), atol=1e-6)
    assert torch.allclose(torch.cat(outs_o), r, atol=1e-5)


def reference_prefix_attention(att, x, mem, kpm, P):
    """The paper's prefix tuning written out per head: Attn(x W_q, [P_k; C W_k], [P_v; C W_v])."""
    T, B, _ = x.shape
    D = C // H
    q = att.q_proj(x) * D ** -0.5
    k, v = att.k_proj(mem), att.v_proj(mem)
    out = torch.zeros(T, B, C)
    for b in range(B):
        for h in range(H):
            sl = slice(h * D, (h + 1) * D)
            Pk, Pv = P[0][:, sl], P[1][:, sl]
            Kh = torch.cat([Pk, k[:, b, sl]])
            Vh = torch.cat([Pv, v[:, b, sl]])
            logits = q[:, b, sl] @ Kh.T
            mask = torch.cat([torch.zeros(Pk.size(0), dtype=torch.bool), kpm[b]])
            logits = logits.masked_fill(mask, float("-inf"))
            out[:, b, sl] = F.softmax(logits, -1) @ Vh
    return att.out_proj(out)


def test_prefix_concat_equals_gated_form_and_reference():
    """§3.1: concat prefix == (1-λ) h + λ Δh, with padding masks, to float precision."""
    prefix = PrefixProvider(1, L_PREFIX, C, mid_dim=0)
    concat = DeltaConfig(attn_mode="prefix_nomlp", attn_option="concat", attn_bn=L_PREFIX).validate()
    gated = DeltaConfig(attn_mode="prefix_nomlp", attn_option="cross_attn", attn_composition="gate_add",
                        attn_bn=L_PREFIX).validate()
    nogate = DeltaConfig(attn_mode="prefix_nomlp", attn_option="cross_attn", attn_composition="add",
                         attn_bn=L_PREFIX).validate()
    _, a = make_pair(concat, prefix, encoder_decoder_attention=True)
    _, b = make_pair(gated, prefix, encoder_decoder_attention=True)
    _, c = make_pair(nogate, prefix, encoder_decoder_attention=True)
    x, mem, kpm = inputs()
    with torch.no_grad():
        args = dict(query=x, key=mem, value=mem, key_padding_mask=kpm)
        oa, ob, oc = a(**args)[0], b(**args)[0], c(**args)[0]
        ref = reference_prefix_attention(a, x, mem, kpm, prefix(0))
    assert torch.allclose(oa, ref, atol=1e-5)
    assert torch.allclose(oa, ob, atol=1e-5), (oa - ob).abs().max()
    assert not torch.allclose(oa, oc, atol=1e-3)  # without the gate it is a different function


def test_gate_lambda_is_the_prefix_share_of_attention_mass():
    """λ(x) from the closed form equals the attention mass the concat form puts on the prefix."""
    prefix = PrefixProvider(1, L_PREFIX, C, mid_dim=0)
    cfg = DeltaConfig(attn_mode="prefix_nomlp", attn_option="concat", attn_bn=L_PREFIX).validate()
    _, att = make_pair(cfg, prefix, encoder_decoder_attention=True)
    x, mem, kpm = inputs()
    D = C // H
    with torch.no_grad():
        q = att.q_proj(x) * D ** -0.5
        k = att.k_proj(mem)
        P = prefix(0)
        b, h = 1, 2
        sl = slice(h * D, (h + 1) * D)
        lp = q[:, b, sl] @ P[0][:, sl].T
        lc = (q[:, b, sl] @ k[:, b, sl].T).masked_fill(kpm[b], float("-inf"))
        lam = lp.exp().sum(-1) / (lp.exp().sum(-1) + lc.exp().sum(-1))
        mass = F.softmax(torch.cat([lp, lc], -1), -1)[:, :L_PREFIX].sum(-1)
    assert torch.allclose(lam, mass, atol=1e-6)


def test_prefix_mlp_cache_not_recomputed_per_step_and_invalidated_by_updates():
    prov = PrefixProvider(3, L_PREFIX, C, mid_dim=8)
    calls = []
    prov.mlp_up.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        first = [prov(i) for i in range(3)]
        for _ in range(10):  # ten "decoding steps" over three layers
            for i in range(3):
                prov(i)
    assert len(calls) == 1, "the MLP must run once per set of weights at inference"
    with torch.no_grad():
        prov.mlp_up.bias.add_(1.0)  # an optimizer step changes the weights in place
        again = prov(0)
    assert len(calls) == 2
    assert not torch.allclose(again, first[0])
    # the per-layer training path gives the same numbers as the all-layer MLP
    per_layer = prov(1)
    assert per_layer.requires_grad
    with torch.no_grad():
        assert torch.allclose(per_layer, prov(1), atol=1e-6)


def test_prefix_cache_sees_fairseqs_optimizer_steps():
    """fairseq's Adam writes through `p.data`, which leaves the version counters as they were: a validation
    after more training must not reuse the MLP output cached at the one before (it did: every later
    validation of a prefix or MAM run repeated the first one's loss)."""
    from fairseq.optim.adam import Adam

    prov = PrefixProvider(2, L_PREFIX, C, mid_dim=8)
    opt = Adam(prov.parameters(), lr=0.1)
    prov.eval()
    with torch.no_grad():
        first = prov(0).clone()  # validation 1: cached
    prov.train()
    versions = [p._version for p in prov.parameters()]
    prov(0).square().sum().backward()
    opt.step()
    assert [p._version for p in prov.parameters()] == versions  # why a version key alone cannot see it
    prov.eval()
    with torch.no_grad():
        again = prov(0)  # validation 2
        assert not torch.allclose(again, first)
        assert torch.equal(again, prov._mlp(None)[0])  # the new weights' prefix


def test_fold_prefix_mlp_keeps_outputs():
    prov = PrefixProvider(2, L_PREFIX, C, mid_dim=8)
    with torch.no_grad():
        before = prov.all_layers().clone()
    n_before = sum(p.numel() for p in prov.parameters())
    prov.fold()
    assert sum(p.numel() for p in prov.parameters()) == 2 * 2 * L_PREFIX * C < n_before
    assert torch.allclose(prov.all_layers(), before, atol=1e-6)


@pytest.mark.parametrize("form", ["none", "concat"])
@pytest.mark.parametrize("kind", ["self", "cross"])
def test_fused_kernel_path_equals_explicit_path(form, kind, monkeypatch):
    """Without returned weights and attention dropout, the attention runs through torch's fused
    kernel (as fairseq's fast path does); it equals the explicit path (need_weights=True) in the output
    and in every gradient, with causal and padding masks and a concat prefix."""
    prefix = PrefixProvider(1, L_PREFIX, C, mid_dim=0) if form == "concat" else None
    delta = DeltaConfig(attn_mode="prefix_nomlp", attn_option="concat", attn_bn=L_PREFIX) if prefix else DeltaConfig()
    kw = dict(self_attention=True) if kind == "self" else dict(encoder_decoder_attention=True)
    _, att = make_pair(delta.validate(), prefix, **kw)
    att.train()  # attention dropout is 0: training mode still takes the fused path
    x, mem, kpm = inputs()
    T = x.size(0)
    if kind == "self":
        kpm = torch.zeros(x.size(1), T, dtype=torch.bool)
        kpm[0, -2:] = True  # right padding in the decoder
        args = dict(query=x, key=x, value=x, key_padding_mask=kpm,
                    attn_mask=torch.triu(torch.full((T, T), float("-inf")), 1))
    else:
        args = dict(query=x, key=mem, value=mem, key_padding_mask=kpm)
    calls = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    results = []
    for need_weights in (False, True):
        params = dict(att.named_parameters(), **({"P": prefix.prefix} if prefix is not None else {}))
        for p in params.values():
            p.grad = None
        xi = x.clone().requires_grad_()
        a = dict(args, query=xi, key=xi if kind == "self" else mem, value=xi if kind == "self" else mem)
        out, w = att(need_weights=need_weights, **a)
        assert (w is None) == (not need_weights)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append((out.detach(), xi.grad, {n: p.grad.clone() for n, p in params.items()}))
        if need_weights is False:
            assert len(calls) == 1, "the fused kernel was not used"
    assert len(calls) == 1, "need_weights=True must take the explicit path"
    (o1, g1, p1), (o2, g2, p2) = results
    assert torch.allclose(o1, o2, atol=1e-6), (o1 - o2).abs().max()
    assert torch.allclose(g1, g2, atol=1e-6)
    assert p1.keys() == p2.keys() and ("P" in p1) == (prefix is not None)
    for n in p1:
        assert torch.allclose(p1[n], p2[n], atol=1e-6), n
        assert n == "k_proj.bias" or p1[n].abs().sum() > 0, n  # (softmax ignores a shared key bias)
