"""The design dimensions as small torch modules, shared by the method modules (core/methods/).

    functional form   Bottleneck:   f(x) = g(x W_down) W_up      (g = ReLU: adapter, identity: LoRA)
    composition       Composition:  h <- h + s * Δh              (s = 1: add, fixed s: scaled add,
                                                                  learnable s)
    representation    DeltaLinear:  a projection (W_q, W_k, W_v, W_o, W_1, W_2) with a LinearDelta
                                    (LoRA, DoRA, (IA)³) and, for W_1/W_2, the FFN site it reads/writes

Every trainable delta parameter sits in a submodule whose name starts with ``delta_``: that naming
is how the freezer, the parameter accounting and the delta checkpoints tell deltas from the base.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

DELTA_PREFIX = "delta_"


def is_delta_name(name: str) -> bool:
    """True for parameters/buffers that belong to a delta (any path component starts with delta_)."""
    return any(part.startswith(DELTA_PREFIX) for part in name.split("."))


class DeltaModule(nn.Module):
    """Base of every delta module: knows how to (re)initialise its own direct parameters, and how
    many of them the paper's formula counts.

    Needed because fairseq's BART/RoBERTa constructors run `init_bert_params` over the whole model
    after it is built, which would overwrite e.g. LoRA's zero W_up.
    """

    # How many times train()/eval() was called on this module: part of the key of every inference cache
    # of a delta's weights (the prefix MLP's output, a bank's stacked parameters). Those caches are also
    # keyed on the parameters' version counters, which load_state_dict and no_grad updates advance, but
    # fairseq's optimizers write through `p.data`, which leaves them as they were; fairseq calls
    # model.train() before every update and model.eval() before validating, so a cache made at one
    # validation is never reused at the next.
    mode_switches = 0

    def train(self, mode: bool = True):
        self.mode_switches += 1
        return super().train(mode)

    def reset_delta_parameters(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def stored_count(self) -> int:
        """The parameters of this module (not of its DeltaModule children) that the paper counts."""
        return 0


class Bottleneck(DeltaModule):
    """Functional form f(x) = g(x W_down) W_up, optionally with a layer norm on its input (`in`)
    or on its scaled output (`out`: LN(s * f(x)), as the reference code and AdapterHub compute it).

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

    def stored_count(self) -> int:
        return self.W_down.weight.numel() + self.W_up.weight.numel()

    def forward(self, x: torch.Tensor, scale=None) -> torch.Tensor:
        """f(x); with `scale` (the composition's s) the output is LN_out(s * f(x)) -- the scale
        goes inside the output layer norm."""
        if self.ln_in is not None:
            x = self.ln_in(x)
        if self.dropout is not None:
            x = self.dropout(x)
        z = self.W_down(x)
        if self.nonlinearity == "relu":
            z = F.relu(z)
        y = self.W_up(z)
        if scale is not None:
            y = scale(y)
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

    def scale(self, delta: torch.Tensor) -> torch.Tensor:
        if isinstance(self.s, float) and self.s == 1.0:
            return delta
        return self.s * delta

    def forward(self, h: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        return h + self.scale(delta)


class LinearDelta(DeltaModule):
    """A delta on one projection y = x W^T + b (W: out x in, as nn.Linear). The merge math lives
    here: `merged(W, b)` gives the weights of the plain linear that computes the same function,
    `unmerged(W', b')` takes them back."""

    module_name = ""  # the attribute it sits under on its DeltaLinear (e.g. "delta_lora")

    def forward(self, x: torch.Tensor, W: torch.Tensor, b: Optional[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def merged(self, W: torch.Tensor, b: Optional[torch.Tensor]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        raise NotImplementedError

    def from_base(self, W: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Initial values of the parameters that start from the pretrained weight W (DoRA's magnitude),
        by parameter name; {} for a delta whose initialisation does not depend on W."""
        return {}

    @torch.no_grad()
    def init_from_base(self, W: torch.Tensor) -> None:
        for name, value in self.from_base(W).items():
            getattr(self, name).copy_(value)

    def unmerge_record(self, W: torch.Tensor) -> Optional[torch.Tensor]:
        """What taking the merge back out needs besides this delta's own parameters, read off the base
        weight before merging (DoRA: the row norms); None when nothing is."""
        return None

    def unmerged(self, W: torch.Tensor, b: Optional[torch.Tensor],
                 record: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        raise NotImplementedError


class DeltaLinear(nn.Linear):
    """nn.Linear whose base weight keeps its name (`q_proj.weight`, `fc1.weight`), so official
    checkpoints load unchanged, with an optional LinearDelta and an optional FFN site.

    fairseq's FFN is fc2(act(fc1(x))): fc1 (role "in") hands its input x to the site (`read`, the
    parallel adapter's input), fc2 (role "out") hands its output to the site (`write`, where the
    adapter's Δh is added). `merge()` folds the delta into W (inference at the base model's speed);
    `unmerge()` takes it out again. In a bank model (core/bank.py) the same projection computes a
    mixed batch, every sample with its own delta's projection delta and biases.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 delta: Optional[LinearDelta] = None, site=None, role: Optional[str] = None, device=None):
        super().__init__(in_features, out_features, bias=bias, device=device)
        self.delta_name = delta.module_name if delta is not None else None
        if delta is not None:
            setattr(self, delta.module_name, delta)
        # the site belongs to the layer (registered there); keep an unregistered reference here
        object.__setattr__(self, "_site", site)
        self.role = role
        self.merged = False
        self._unmerge_record = None
        self.path: Optional[str] = None  # its name in the model: the bank's site key (set by attach_bank)

    @property
    def delta(self) -> Optional[LinearDelta]:
        return getattr(self, self.delta_name) if self.delta_name else None

    @classmethod
    def wrap(cls, linear: nn.Linear, delta: Optional[LinearDelta]) -> "DeltaLinear":
        """The same projection (the very same weight tensors, not copies) with a delta. Its own placeholder
        weights are made on the meta device when it has no delta: every attention projection is wrapped
        (a bank may serve any), and a wrap without a delta of its own must not draw from the RNG, so that
        a seed builds the same model as before all four were wrapped."""
        new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, delta=delta,
                  device="meta" if delta is None else None)
        new.weight = linear.weight
        if linear.bias is not None:
            new.bias = linear.bias
        if delta is not None:
            delta.init_from_base(new.weight)
        return new

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged and self.delta is not None:
            self._unmerge_record = self.delta.unmerge_record(self.weight)
            W, b = self.delta.merged(self.weight, self.bias)
            self.weight.copy_(W.to(self.weight.dtype))
            if b is not None:
                self.bias.copy_(b.to(self.bias.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            W, b = self.delta.unmerged(self.weight, self.bias, self._unmerge_record)
            self.weight.copy_(W.to(self.weight.dtype))
            if b is not None:
                self.bias.copy_(b.to(self.bias.dtype))
            self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        site = self._site
        if site is not None and self.role == "in":
            site.read(x)
        delta = self.delta
        bank = self.__dict__.get("_bank")  # a delta bank (core/bank.py): each sample by its own delta
        if bank is not None and (bank.has(("proj", self.path)) or bank.has(("bias", self.path + ".bias"))):
            y = bank.linear(self, x)
        elif delta is None or self.merged:
            y = F.linear(x, self.weight, self.bias)
        else:
            y = delta(x, self.weight, self.bias)
        if site is not None and self.role == "out":
            y = site.write(y)
        return y


def reset_all_deltas(model: nn.Module) -> None:
    """(Re)initialise every delta module of a model, e.g. after fairseq's init_bert_params, then the
    parameters that start from the (current) base weights."""
    for m in model.modules():
        if isinstance(m, DeltaModule):
            m.reset_delta_parameters()
    init_deltas_from_base(model)


def init_deltas_from_base(model: nn.Module) -> None:
    """Set the delta parameters that start from the pretrained weights (DoRA's magnitude) from the
    weights the model holds now: after building, and after a new base is loaded under fresh deltas."""
    for m in model.modules():
        if isinstance(m, DeltaLinear) and m.delta is not None:
            m.delta.init_from_base(m.weight)


def base_init_values(model: nn.Module, base_state: Dict[str, torch.Tensor], prefix: str = "") -> Dict[str, torch.Tensor]:
    """{key: value} of the base-dependent delta parameters (DoRA's m) as they start on the base in
    `base_state` -- what a fresh delta on that base holds."""
    out = {}
    for host, m in model.named_modules():
        if isinstance(m, DeltaLinear) and m.delta is not None and prefix + host + ".weight" in base_state:
            for name, value in m.delta.from_base(base_state[prefix + host + ".weight"]).items():
                out[f"{prefix}{host}.{m.delta_name}.{name}"] = value
    return out
