"""One config object for every delta method: the single source of truth.

The paper's four design dimensions are read off this object:

* functional form  -- `attn_option` / `ffn_mode` (softmax for prefix, ReLU for
  adapters and MH PA, identity for LoRA);
* modified representation -- attention heads (prefix, MH PA), attention output
  (attention adapters), attention W_q/W_v (LoRA), FFN (FFN adapters, LoRA W_1/W_2);
* insertion form -- parallel (reads the sub-layer input) or sequential (reads
  the sub-layer output);
* composition -- add, gated add (prefix), scaled add (LoRA, scaled PA).

The flag names and meanings follow the reference code
(jxhe/unify-parameter-efficient-tuning); `DeltaConfig.validate` is the one place
that rejects combinations which would train something else than the user asked
for, with a message that names the flag and the fix. Which modes and options exist,
and what each method checks of its own flags, comes from the method registry
(core/methods/); `core/plan.py` turns a validated config into sites.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Optional, Union

from unifairseq.core import methods
from unifairseq.errors import UnifairseqError

ATTN_COMPOSITIONS = ("add", "gate_add")
LN_OPTIONS = ("in", "out", "none")
INIT_OPTIONS = ("bert", "lora")


def attn_modes():
    return ("none",) + methods.attn_modes()


def ffn_modes():
    return ("none",) + methods.ffn_modes()


def mode_options(mode: str, side: str):
    """The --attn-option / --ffn-option values of a mode (first = default), from its methods."""
    return tuple(dict.fromkeys(o for m in methods.METHODS.values() if mode in getattr(m, side + "_modes")
                               for o in getattr(m, side + "_options")))


class DeltaConfigError(UnifairseqError, ValueError):
    """A delta configuration that cannot be built; the message names the flag and the fix."""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass
class DeltaConfig:
    attn_mode: str = "none"
    attn_option: Optional[str] = None  # None: the mode's default
    attn_composition: str = "add"
    attn_bn: int = 30  # prefix length l, adapter bottleneck r, LoRA rank r, prompt length
    ffn_mode: str = "none"
    ffn_option: Optional[str] = None
    ffn_bn: int = 512
    ffn_adapter_scalar: Union[float, str] = 1.0  # a number s, or "learnable_scalar"
    ffn_adapter_layernorm_option: str = "none"
    ffn_adapter_init_option: str = "lora"
    mid_dim: int = 800  # hidden size of the prefix reparametrization MLP
    prefix_dropout: float = 0.0
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0

    # ------------------------------------------------------------------ build
    @classmethod
    def from_args(cls, args) -> "DeltaConfig":
        """Read the config from a fairseq/argparse namespace (or omegaconf node)."""
        kwargs = {}
        for f in fields(cls):
            value = getattr(args, f.name, None)
            if value is not None:
                kwargs[f.name] = value
        cfg = cls(**kwargs)
        cfg.validate()
        return cfg

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    # --------------------------------------------------------------- validate
    def validate(self) -> "DeltaConfig":
        def bad(flag, msg):
            raise DeltaConfigError(f"{_flag(flag)}: {msg}")

        for side, modes in (("attn", attn_modes()), ("ffn", ffn_modes())):
            mode = getattr(self, side + "_mode")
            if mode not in modes:
                bad(side + "_mode", f"unknown method {mode!r}; choose one of {', '.join(modes)}")
            allowed = mode_options(mode, side) if mode != "none" else ()
            option = getattr(self, side + "_option")
            if not allowed:
                if option not in (None, "none"):
                    bad(side + "_option", f"{option!r} has no meaning with --{side}-mode {mode}; drop it")
                setattr(self, side + "_option", "none")
                continue
            if option in (None, "none"):
                option = allowed[0]
            if option not in allowed:
                what = "an option of" if side == "attn" else "an insertion of"
                bad(side + "_option", f"{option!r} is not {what} --{side}-mode {mode}; "
                    f"choose one of {', '.join(allowed)}")
            setattr(self, side + "_option", option)

        if self.attn_composition not in ATTN_COMPOSITIONS:
            bad("attn_composition", f"unknown composition {self.attn_composition!r}; choose add or gate_add")
        chosen = [m for m in methods.METHODS.values() if m.selected(self)]
        if self.attn_composition == "gate_add" and not any(m.gate_capable(self) for m in chosen):
            bad("attn_composition", "gate_add (the gated form (1-λ)h + λΔh) exists only for the softmax prefix "
                "computed as its own attention: use --attn-mode prefix --attn-option cross_attn, "
                "or --attn-composition add")
        for m in chosen:
            if m.sized and self.attn_mode in m.attn_modes and self.attn_bn <= 0:
                bad("attn_bn", f"must be a positive length/rank for --attn-mode {self.attn_mode}, got {self.attn_bn}")
            if m.sized and self.ffn_mode in m.ffn_modes and self.ffn_bn <= 0:
                bad("ffn_bn", f"must be a positive rank for --ffn-mode {self.ffn_mode}, got {self.ffn_bn}")
        self.ffn_adapter_scalar = self._parse_scalar(self.ffn_adapter_scalar)
        if self.ffn_adapter_layernorm_option not in LN_OPTIONS:
            bad("ffn_adapter_layernorm_option", f"choose one of {', '.join(LN_OPTIONS)}")
        if self.ffn_adapter_init_option not in INIT_OPTIONS:
            bad("ffn_adapter_init_option", f"choose one of {', '.join(INIT_OPTIONS)}")
        for name in ("prefix_dropout", "lora_dropout"):
            p = getattr(self, name)
            if not 0.0 <= p < 1.0:
                bad(name, f"a dropout probability must be in [0, 1), got {p}")
        for m in chosen:
            m.validate(self, bad)
        return self

    @staticmethod
    def _parse_scalar(value):
        if value == "learnable_scalar":
            return value
        try:
            s = float(value)
        except (TypeError, ValueError):
            raise DeltaConfigError(f"--ffn-adapter-scalar: {value!r} is neither a number nor 'learnable_scalar'")
        if not math.isfinite(s):
            raise DeltaConfigError(f"--ffn-adapter-scalar: {value!r} is not a finite number; use a positive s "
                                   "(the paper's scaled PA uses 4) or learnable_scalar")
        if s == 0:
            raise DeltaConfigError("--ffn-adapter-scalar: 0 switches the FFN adapter off; use a positive s "
                                   "(the paper's scaled PA uses 4) or learnable_scalar")
        return s

    # ------------------------------------------------------------ properties
    @property
    def empty(self) -> bool:
        return self.attn_mode == "none" and self.ffn_mode == "none"

    def describe(self) -> str:
        parts = []
        if self.attn_mode != "none":
            parts.append(f"attn={self.attn_mode}/{self.attn_option}/{self.attn_composition}(bn={self.attn_bn})")
        if self.ffn_mode != "none":
            parts.append(f"ffn={self.ffn_mode}/{self.ffn_option}(bn={self.ffn_bn}, s={self.ffn_adapter_scalar})")
        return ", ".join(parts) or "no delta"


def add_delta_args(parser) -> None:
    """The fairseq flags. No defaults here: fairseq suppresses unset model flags, so the
    architecture presets can fill them with getattr(args, name, preset_value)."""
    g = parser  # fairseq passes its model-specific argument group here
    g.add_argument("--attn-mode", choices=attn_modes(), help="delta on the attention sub-layers")
    g.add_argument("--attn-option", type=str,
                   help="prefix: concat | cross_attn (prefix as its own attention) | cross_attn_relu (MH PA "
                        "through the prefix MLP); adapter: parallel | sequential | mh_adapter (multi-head PA)")
    g.add_argument("--attn-composition", choices=ATTN_COMPOSITIONS,
                   help="add, or gate_add: (1-λ(x))h + λ(x)Δh for --attn-option cross_attn")
    g.add_argument("--attn-bn", type=int, help="prefix length l / bottleneck r / LoRA rank / prompt length")
    g.add_argument("--ffn-mode", choices=ffn_modes(), help="delta on the FFN sub-layers")
    g.add_argument("--ffn-option", type=str,
                   help="adapter insertion: parallel | sequential (=pfeiffer, after the FFN) | "
                        "houlsby (after attention and after the FFN)")
    g.add_argument("--ffn-bn", type=int, help="FFN adapter bottleneck r / FFN LoRA rank")
    g.add_argument("--ffn-adapter-scalar", type=str, help="composition scale s (a number) or learnable_scalar")
    g.add_argument("--ffn-adapter-layernorm-option", choices=LN_OPTIONS,
                   help="layer norm on the adapter input (in), its scaled output (out: LN(s*f(x))) or none")
    g.add_argument("--ffn-adapter-init-option", choices=INIT_OPTIONS,
                   help="bert: normal(0.02) weights; lora: W_down kaiming-uniform, W_up and biases zero")
    g.add_argument("--mid-dim", type=int, help="hidden size of the prefix reparametrization MLP")
    g.add_argument("--prefix-dropout", type=float, help="dropout on the prefix key/value vectors")
    g.add_argument("--lora-alpha", type=float, help="LoRA alpha; the scale is s = alpha / r")
    g.add_argument("--lora-dropout", type=float, help="dropout on the LoRA input")
    # delta checkpoints (see unifairseq/fairseq/checkpoint.py and checkpoint_io.py, core/bases.py for the search order)
    g.add_argument("--delta-base", type=str, metavar="NAME_OR_PATH",
                   help="the pretrained (full) checkpoint the deltas sit on: a file, a folder holding model.pt, or "
                        "a base name (bart.large, ...) found through $UNIFAIRSEQ_BASES and the cache; default: the "
                        "base the delta records, or --restore-file/--finetune-from-model when training starts")
    g.add_argument("--delta-allow-base-mismatch", action="store_true",
                   help="load a delta onto a base whose fingerprint differs from the one it was trained on")
    g.add_argument("--delta-save-full", action="store_true",
                   help="write the whole model into checkpoints instead of only the trained tensors")
