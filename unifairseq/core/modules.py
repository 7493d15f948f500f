"""The design dimensions as small torch modules, independent of fairseq.

    functional form   Bottleneck:   f(x) = g(x W_down) W_up      (g = ReLU: adapter, identity: LoRA)
    composition       Composition:  h <- h + s * Δh              (s = 1: add, fixed s: scaled add,
                                                                  learnable s)
    insertion         Adapter:      parallel reads the sub-layer input x,
                                    sequential reads the sub-layer output h
    representation    where the module sits: LoRALinear on a projection (W_q, W_v, W_1, W_2),
                                    Adapter on an attention output or the FFN (FFNAdapterSite).

The softmax functional form (prefix tuning) lives with the attention heads in
`attention.py` because it needs the attention logits.

Every trainable delta parameter sits in a submodule whose name starts with ``delta_``:
that naming is how the freezer, the parameter accounting and the delta
checkpoints tell deltas from the base.
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

DELTA_PREFIX = "delta_"


def is_delta_name(name: str) -> bool:
    """True for parameters/buffers that belong to a delta (any path component starts with delta_)."""
    return any(part.startswith(DELTA_PREFIX) for part in name.split("."))


class DeltaModule(nn.Module):
    """Base of every delta module: knows how to (re)initialise its own direct parameters.

    Needed because fairseq's BART/RoBERTa constructors run `init_bert_params` over
    the whole model after it is built, which would overwrite e.g. LoRA's zero W_up.
    """

    def reset_delta_parameters(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class Bottleneck(DeltaModule):
    """Functional form f(x) = g(x W_down) W_up, optionally with a layer norm on its input or output.

    x: (..., d_in) -> (..., d_out)
    """

    def __init__(self, d_in: int, r: int, d_out: Optional[int] = None, nonlinearity: str = "relu",
                 layernorm: str = "none", init: str = "bert", bias: bool = True, dropout: float = 0.0):
        super().__init__()
        d_out = d_in if d_out is None else d_out
        self.W_down = nn.Linear(d_in, r, bias=bias)
        self.W_up = nn.Linear(r, d_out, bias=bias)
        self.nonlinearity = nonlinearity
        self.init = init
        self.ln_in = nn.LayerNorm(d_in) if layernorm == "in" else None
        self.ln_out = nn.LayerNorm(d_out) if layernorm == "out" else None
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.reset_delta_parameters()

    def reset_delta_parameters(self) -> None:
        if self.init == "lora":
            # LoRA init: W_down kaiming-uniform, W_up zero -> f(x) = 0 at initialisation.
            nn.init.kaiming_uniform_(self.W_down.weight, a=math.sqrt(5))
            nn.init.zeros_(self.W_up.weight)
        else:  # "bert": normal(0, 0.02), as the reference adapters
            nn.init.normal_(self.W_down.weight, std=0.02)
            nn.init.normal_(self.W_up.weight, std=0.02)
        for lin in (self.W_down, self.W_up):
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)
        for ln in (self.ln_in, self.ln_out):
            if ln is not None:
                ln.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.ln_in is not None:
            x = self.ln_in(x)
        if self.dropout is not None:
            x = self.dropout(x)
        z = self.W_down(x)
        if self.nonlinearity == "relu":
            z = F.relu(z)
        y = self.W_up(z)
        if self.ln_out is not None:
            y = self.ln_out(y)
        return y


class Composition(DeltaModule):
    """h <- h + s * Δh, with s fixed (1 = plain add) or a learnable scalar (initialised to 1)."""

    def __init__(self, scalar: Union[float, str] = 1.0):
        super().__init__()
        if scalar == "learnable_scalar":
            self.s = nn.Parameter(torch.ones(1))
        else:
            self.s = float(scalar)

    def reset_delta_parameters(self) -> None:
        if isinstance(self.s, nn.Parameter):
            nn.init.ones_(self.s)

    def forward(self, h: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        if isinstance(self.s, float) and self.s == 1.0:
            return h + delta
        return h + self.s * delta


class Adapter(DeltaModule):
    """Bottleneck + composition + insertion form.

    parallel:   h_out <- h_out + s * f(x_in)      (x_in = the sub-layer's input)
    sequential: h_out <- h_out + s * f(h_out)
    """

    def __init__(self, d: int, r: int, insertion: str, scalar: Union[float, str] = 1.0,
                 layernorm: str = "none", init: str = "bert"):
        super().__init__()
        assert insertion in ("parallel", "sequential"), insertion
        self.insertion = insertion
        self.form = Bottleneck(d, r, nonlinearity="relu", layernorm=layernorm, init=init)
        self.compose = Composition(scalar)

    def reset_delta_parameters(self) -> None:
        pass  # its parts (form, compose) are DeltaModules and reset themselves

    def forward(self, h_out: torch.Tensor, x_in: Optional[torch.Tensor] = None) -> torch.Tensor:
        src = x_in if self.insertion == "parallel" else h_out
        assert src is not None, "a parallel adapter needs the sub-layer input"
        return self.compose(h_out, self.form(src))


class LoRALinear(nn.Linear):
    """nn.Linear with LoRA: y = x W^T + b + s * dropout(x) W_down W_up,  s = alpha / r.

    A subclass of nn.Linear so that the base weight keeps its name (`q_proj.weight`)
    and official checkpoints load unchanged. `merge()` folds s * W_down W_up into W
    (inference at the base model's speed); `unmerge()` takes it out again.
    """

    def __init__(self, in_features: int, out_features: int, r: int, alpha: float,
                 dropout: float = 0.0, bias: bool = True):
        super().__init__(in_features, out_features, bias=bias)
        self.delta_lora = Bottleneck(in_features, r, out_features, nonlinearity="identity",
                                     init="lora", bias=False)
        self.r = r
        self.scaling = alpha / r
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.merged = False

    @classmethod
    def from_linear(cls, linear: nn.Linear, r: int, alpha: float, dropout: float = 0.0) -> "LoRALinear":
        new = cls(linear.in_features, linear.out_features, r, alpha, dropout, bias=linear.bias is not None)
        new.weight = linear.weight  # share, do not copy: the base weight stays the same tensor
        if linear.bias is not None:
            new.bias = linear.bias
        return new

    def delta_weight(self) -> torch.Tensor:
        """s * (W_down W_up)^T in nn.Linear's (out, in) layout."""
        return self.scaling * (self.delta_lora.W_up.weight @ self.delta_lora.W_down.weight)

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self.weight.add_(self.delta_weight().to(self.weight.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.weight.sub_(self.delta_weight().to(self.weight.dtype))
            self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        if self.merged:
            return y
        xd = self.lora_dropout(x) if self.lora_dropout is not None else x
        return y + self.scaling * self.delta_lora(xd)


class FFNAdapterSite(DeltaModule):
    """The FFN adapter, read at fc1 and written at fc2 of fairseq's layer.

    fairseq's layer computes  fc2(dropout(act(fc1(x))))  with x the FFN input; the
    layer's `fc1`/`fc2` are `FFNLinear`s that call `read` and `write` here, so the
    fairseq forward runs unchanged:
      parallel:   Δh = f(x) is added to the FFN output (x = FFN input, what fc1 reads)
      sequential: h + f(h) on the FFN output (Pfeiffer; Houlsby also adds one after attention)
    """

    def __init__(self, d: int, r: int, insertion: str, scalar, layernorm: str, init: str):
        super().__init__()
        self.delta_adapter = Adapter(d, r, insertion, scalar, layernorm, init)
        self._x: Optional[torch.Tensor] = None

    def reset_delta_parameters(self) -> None:
        pass  # delta_adapter resets itself

    def read(self, x: torch.Tensor) -> None:
        if self.delta_adapter.insertion == "parallel":
            self._x = x

    def write(self, h: torch.Tensor) -> torch.Tensor:
        if self.delta_adapter.insertion == "sequential":
            return self.delta_adapter(h)
        x, self._x = self._x, None
        if x is None:
            raise RuntimeError("FFN adapter: fc2 ran without fc1 first; the layer's FFN must call fc1 then fc2")
        return self.delta_adapter(h, x)


def make_ffn_linear(in_features: int, out_features: int, role: str, site: Optional[FFNAdapterSite],
                    lora: Optional[tuple]) -> nn.Linear:
    """Build fc1 (role 'in') or fc2 (role 'out') for a layer.

    The result is an nn.Linear (or LoRALinear) instance whose forward also calls the
    site's read (fc1) or write (fc2). Parameter names stay `weight`/`bias`, so official
    checkpoints load as they are.
    """
    base_cls = LoRALinear if lora is not None else nn.Linear
    args = (in_features, out_features) + (tuple(lora) if lora is not None else ())
    layer = _SITE_CLASSES[(base_cls, role)](*args)
    # the site belongs to the layer (registered there); keep an unregistered reference here
    object.__setattr__(layer, "_site", site)
    return layer


def _with_site(base_cls, role):
    class _SiteLinear(base_cls):
        def forward(self, x):
            site = self._site
            if site is not None and role == "in":
                site.read(x)
            y = super().forward(x)
            if site is not None and role == "out":
                y = site.write(y)
            return y

    _SiteLinear.__name__ = f"{'FFNIn' if role == 'in' else 'FFNOut'}{base_cls.__name__}"
    _SiteLinear.__qualname__ = _SiteLinear.__name__
    return _SiteLinear


_SITE_CLASSES = {(cls, role): _with_site(cls, role) for cls in (nn.Linear, LoRALinear) for role in ("in", "out")}


def reset_all_deltas(model: nn.Module) -> None:
    """(Re)initialise every delta module of a model, e.g. after fairseq's init_bert_params."""
    for m in model.modules():
        if isinstance(m, DeltaModule):
            m.reset_delta_parameters()
