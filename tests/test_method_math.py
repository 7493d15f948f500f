"""Each method module's math against a hand-written reference on plain tensors (no fairseq)."""
import torch
import torch.nn.functional as F

from unifairseq.core.methods.adapter import Adapter
from unifairseq.core.methods.dora import DoRA
from unifairseq.core.methods.ia3 import IA3
from unifairseq.core.modules import DeltaLinear

torch.manual_seed(0)


def linear_with(delta, d_in=6, d_out=5):
    lin = torch.nn.Linear(d_in, d_out)
    return DeltaLinear.wrap(lin, delta), lin.weight.detach().clone(), lin.bias.detach().clone()


def test_dora_matches_the_formula_merges_and_unmerges_exactly():
    layer, W, b = linear_with(DoRA(6, 5, r=3, alpha=6.0))
    dora = layer.delta
    x = torch.randn(4, 6)
    with torch.no_grad():
        assert torch.allclose(layer(x), F.linear(x, W, b), atol=1e-6)  # m = ||W||_row: the base at start
        assert torch.allclose(dora.m, W.norm(dim=1))
        dora.W_up.weight.normal_()
        dora.m.mul_(torch.linspace(0.5, 1.5, 5))
        s = 6.0 / 3
        V = W + s * dora.W_up.weight @ dora.W_down.weight
        W_ref = dora.m.unsqueeze(1) * V / V.norm(dim=1, keepdim=True)  # magnitude x direction
        ref = x @ W_ref.T + b
        assert torch.allclose(layer(x), ref, atol=1e-5)
        layer.merge()
        assert torch.allclose(layer.weight, W_ref, atol=1e-6) and torch.allclose(layer(x), ref, atol=1e-5)
        assert torch.allclose(layer.weight.norm(dim=1), dora.m, atol=1e-5)  # W' has exactly the magnitudes m
        layer.unmerge()
        assert torch.allclose(layer.weight, W, atol=1e-6)
    # the norm is not detached: the gradient of m and of W_up is the formula's
    y = layer(x).sum()
    y.backward()
    m = dora.m.detach().clone().requires_grad_(True)
    up = dora.W_up.weight.detach().clone().requires_grad_(True)
    V = W + s * up @ dora.W_down.weight.detach()
    (x @ (m.unsqueeze(1) * V / V.norm(dim=1, keepdim=True)).T + b).sum().backward()
    assert torch.allclose(dora.m.grad, m.grad, atol=1e-5) and torch.allclose(dora.W_up.weight.grad, up.grad, atol=1e-5)


def test_ia3_scales_outputs_or_inputs_and_merges_exactly():
    for where in ("out", "in"):
        n = 5 if where == "out" else 6
        layer, W, b = linear_with(IA3(n, where))
        x = torch.randn(4, 6)
        with torch.no_grad():
            assert torch.equal(layer(x), F.linear(x, W, b))  # l = 1 at start
            layer.delta.l.copy_(torch.linspace(0.2, 2.0, n))
            l = layer.delta.l
            ref = (x @ W.T + b) * l if where == "out" else (x * l) @ W.T + b
            assert torch.allclose(layer(x), ref, atol=1e-6)
            layer.merge()
            assert torch.allclose(F.linear(x, layer.weight, layer.bias), ref, atol=1e-5)
            layer.unmerge()
            assert torch.allclose(layer.weight, W, atol=1e-6) and torch.allclose(layer.bias, b, atol=1e-6)


def layer_norm(y, ln):
    mu, var = y.mean(-1, keepdim=True), y.var(-1, unbiased=False, keepdim=True)
    return (y - mu) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias


def test_adapter_output_layernorm_is_applied_after_the_scale():
    """--ffn-adapter-layernorm-option out: h + LN(s * f(x)), as jxhe's petl_factory and AdapterHub
    compute it (not s * LN(f(x))); with a fixed s != 1 and with a learnable s."""
    x, h = torch.randn(3, 8), torch.randn(3, 8)
    for scalar in (3.0, "learnable_scalar"):
        a = Adapter(8, 4, "parallel", scalar, layernorm="out", init="bert")
        with torch.no_grad():
            if scalar == "learnable_scalar":
                a.compose.s.fill_(2.5)
            a.form.ln_out.weight.normal_(), a.form.ln_out.bias.normal_()
        s = 3.0 if scalar == 3.0 else 2.5
        f = a.form.W_up(F.relu(a.form.W_down(x)))
        ref = h + layer_norm(s * f, a.form.ln_out)
        assert torch.allclose(a(h, x), ref, atol=1e-5)
        wrong = h + s * layer_norm(f, a.form.ln_out)
        assert not torch.allclose(a(h, x), wrong, atol=1e-3)


def test_wrapping_a_projection_without_a_delta_draws_nothing_from_the_rng():
    """Every attention projection is a DeltaLinear (a bank may serve any); one without a delta of its own
    must not draw its placeholder weights from the RNG, so that a seed builds the same model as when only
    the planned projections were wrapped (687549e and before): same initial deltas, same training run."""
    lin = torch.nn.Linear(6, 4)
    torch.manual_seed(5)
    state = torch.get_rng_state()
    wrapped = DeltaLinear.wrap(lin, None)
    assert torch.equal(torch.get_rng_state(), state)
    assert wrapped.weight is lin.weight and wrapped.bias is lin.bias and not wrapped.weight.is_meta
    x = torch.randn(3, 6)
    assert torch.equal(wrapped(x), lin(x))
