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
for, with a message that names the flag and the fix.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Optional, Union

ATTN_MODES = ("none", "prefix", "prefix_nomlp", "lora", "adapter", "bitfit", "prompt_tuning")
ATTN_OPTIONS = {
    # attn_mode -> allowed attn_option values (first one is the default)
    "prefix": ("concat", "cross_attn", "cross_attn_relu"),
    "prefix_nomlp": ("concat", "cross_attn", "cross_attn_relu"),
    "adapter": ("parallel", "sequential", "mh_adapter"),
}
ATTN_COMPOSITIONS = ("add", "gate_add")
FFN_MODES = ("none", "adapter", "lora")
FFN_OPTIONS = ("parallel", "sequential", "pfeiffer", "houlsby")
LN_OPTIONS = ("in", "out", "none")
INIT_OPTIONS = ("bert", "lora")


class DeltaConfigError(ValueError):
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

        if self.attn_mode not in ATTN_MODES:
            bad("attn_mode", f"unknown method {self.attn_mode!r}; choose one of {', '.join(ATTN_MODES)}")
        if self.ffn_mode not in FFN_MODES:
            bad("ffn_mode", f"unknown method {self.ffn_mode!r}; choose one of {', '.join(FFN_MODES)}")

        # attention side
        allowed = ATTN_OPTIONS.get(self.attn_mode)
        if allowed is None:
            if self.attn_option not in (None, "none"):
                bad("attn_option", f"{self.attn_option!r} has no meaning with --attn-mode {self.attn_mode}; drop it")
            self.attn_option = "none"
        else:
            if self.attn_option in (None, "none"):
                self.attn_option = allowed[0]
            if self.attn_option not in allowed:
                bad("attn_option", f"{self.attn_option!r} is not an option of --attn-mode {self.attn_mode}; "
                    f"choose one of {', '.join(allowed)}")
        if self.attn_composition not in ATTN_COMPOSITIONS:
            bad("attn_composition", f"unknown composition {self.attn_composition!r}; choose add or gate_add")
        if self.attn_composition == "gate_add" and not self.is_softmax_prefix_gated_capable():
            bad("attn_composition", "gate_add (the gated form (1-λ)h + λΔh) exists only for the softmax prefix "
                "computed as its own attention: use --attn-mode prefix --attn-option cross_attn, "
                "or --attn-composition add")
        if self.attn_mode != "none" and self.attn_mode != "bitfit" and self.attn_bn <= 0:
            bad("attn_bn", f"must be a positive length/rank for --attn-mode {self.attn_mode}, got {self.attn_bn}")
        if self.attn_mode == "prefix" and self.mid_dim <= 0:
            bad("mid_dim", f"the prefix reparametrization MLP needs --mid-dim > 0, got {self.mid_dim}; "
                "use --attn-mode prefix_nomlp for direct prefix vectors")

        # FFN side
        if self.ffn_mode == "adapter":
            if self.ffn_option in (None, "none"):
                self.ffn_option = "parallel"
            if self.ffn_option not in FFN_OPTIONS:
                bad("ffn_option", f"unknown insertion {self.ffn_option!r}; choose one of {', '.join(FFN_OPTIONS)}")
            if self.ffn_option == "pfeiffer":  # Pfeiffer = one sequential adapter after the FFN
                self.ffn_option = "sequential"
            if self.ffn_option == "houlsby" and self.attn_mode == "adapter":
                bad("ffn_option", "houlsby already puts a sequential adapter after attention; "
                    "combine it with --attn-mode none/prefix/lora, or use --ffn-option sequential")
        else:
            if self.ffn_option not in (None, "none"):
                bad("ffn_option", f"{self.ffn_option!r} has no meaning with --ffn-mode {self.ffn_mode}; drop it")
            self.ffn_option = "none"
        if self.ffn_mode != "none" and self.ffn_bn <= 0:
            bad("ffn_bn", f"must be a positive rank for --ffn-mode {self.ffn_mode}, got {self.ffn_bn}")
        self.ffn_adapter_scalar = self._parse_scalar(self.ffn_adapter_scalar)
        if self.ffn_adapter_layernorm_option not in LN_OPTIONS:
            bad("ffn_adapter_layernorm_option", f"choose one of {', '.join(LN_OPTIONS)}")
        if self.ffn_adapter_init_option not in INIT_OPTIONS:
            bad("ffn_adapter_init_option", f"choose one of {', '.join(INIT_OPTIONS)}")

        # LoRA
        if self.uses_lora and self.lora_alpha == 0:
            bad("lora_alpha", "0 makes the LoRA scale s = alpha/r zero, which silently switches LoRA off; "
                "set a positive alpha (e.g. 2*r)")
        for name in ("prefix_dropout", "lora_dropout"):
            p = getattr(self, name)
            if not 0.0 <= p < 1.0:
                bad(name, f"a dropout probability must be in [0, 1), got {p}")
        return self

    @staticmethod
    def _parse_scalar(value):
        if value == "learnable_scalar":
            return value
        try:
            s = float(value)
        except (TypeError, ValueError):
            raise DeltaConfigError(f"--ffn-adapter-scalar: {value!r} is neither a number nor 'learnable_scalar'")
        if s == 0:
            raise DeltaConfigError("--ffn-adapter-scalar: 0 switches the FFN adapter off; use a positive s "
                                   "(the paper's scaled PA uses 4) or learnable_scalar")
        return s

    # ------------------------------------------------------------ properties
    def is_softmax_prefix_gated_capable(self) -> bool:
        return self.attn_mode in ("prefix", "prefix_nomlp") and self.attn_option == "cross_attn"

    @property
    def uses_lora(self) -> bool:
        return self.attn_mode == "lora" or self.ffn_mode == "lora"

    @property
    def head_delta(self) -> bool:
        """Does the delta act on attention heads (prefix family / MH PA)?"""
        return self.attn_mode in ("prefix", "prefix_nomlp") or self.attn_option == "mh_adapter"

    @property
    def bitfit(self) -> bool:
        return self.attn_mode == "bitfit"

    @property
    def prompt_len(self) -> int:
        return self.attn_bn if self.attn_mode == "prompt_tuning" else 0

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
    g.add_argument("--attn-mode", choices=ATTN_MODES, help="delta on the attention sub-layers")
    g.add_argument("--attn-option", type=str,
                   help="prefix: concat | cross_attn (prefix as its own attention) | cross_attn_relu (MH PA "
                        "through the prefix MLP); adapter: parallel | sequential | mh_adapter (multi-head PA)")
    g.add_argument("--attn-composition", choices=ATTN_COMPOSITIONS,
                   help="add, or gate_add: (1-λ(x))h + λ(x)Δh for --attn-option cross_attn")
    g.add_argument("--attn-bn", type=int, help="prefix length l / bottleneck r / LoRA rank / prompt length")
    g.add_argument("--ffn-mode", choices=FFN_MODES, help="delta on the FFN sub-layers")
    g.add_argument("--ffn-option", type=str,
                   help="adapter insertion: parallel | sequential (=pfeiffer, after the FFN) | "
                        "houlsby (after attention and after the FFN)")
    g.add_argument("--ffn-bn", type=int, help="FFN adapter bottleneck r / FFN LoRA rank")
    g.add_argument("--ffn-adapter-scalar", type=str, help="composition scale s (a number) or learnable_scalar")
    g.add_argument("--ffn-adapter-layernorm-option", choices=LN_OPTIONS,
                   help="layer norm on the adapter input (in), output (out) or none")
    g.add_argument("--ffn-adapter-init-option", choices=INIT_OPTIONS,
                   help="bert: normal(0.02) weights; lora: W_down kaiming-uniform, W_up and biases zero")
    g.add_argument("--mid-dim", type=int, help="hidden size of the prefix reparametrization MLP")
    g.add_argument("--prefix-dropout", type=float, help="dropout on the prefix key/value vectors")
    g.add_argument("--lora-alpha", type=float, help="LoRA alpha; the scale is s = alpha / r")
    g.add_argument("--lora-dropout", type=float, help="dropout on the LoRA input")
    # delta checkpoints (see unifairseq/checkpoint.py)
    g.add_argument("--delta-base", type=str, metavar="PATH",
                   help="the pretrained (full) checkpoint the deltas sit on; default: the path recorded in "
                        "the delta checkpoint, or --restore-file/--finetune-from-model when training starts")
    g.add_argument("--delta-allow-base-mismatch", action="store_true",
                   help="load a delta onto a base whose fingerprint differs from the one it was trained on")
    g.add_argument("--delta-save-full", action="store_true",
                   help="write the whole model into checkpoints instead of only the trained tensors")


# --------------------------------------------------------------------- presets
# A named method is a preset of the design dimensions, not a new code path.
# Numbers are the paper's (Table 1/3/4 and the reference scripts).
PRESETS = {
    "mam": dict(attn_mode="prefix", attn_option="concat", attn_bn=30, mid_dim=800,
                ffn_mode="adapter", ffn_option="parallel", ffn_bn=512, ffn_adapter_scalar=4.0,
                ffn_adapter_init_option="lora", ffn_adapter_layernorm_option="none"),
    "prefix": dict(attn_mode="prefix", attn_option="concat", attn_bn=200, mid_dim=800),
    "gated_prefix": dict(attn_mode="prefix", attn_option="cross_attn", attn_composition="gate_add",
                         attn_bn=30, mid_dim=800),
    "lora_attn": dict(attn_mode="lora", attn_bn=16, lora_alpha=32.0, lora_dropout=0.1),
    "lora_ffn": dict(ffn_mode="lora", ffn_bn=102, lora_alpha=408.0, lora_dropout=0.1),
    "pfeiffer": dict(ffn_mode="adapter", ffn_option="sequential", ffn_bn=600, ffn_adapter_scalar=1.0,
                     ffn_adapter_init_option="bert"),
    "houlsby": dict(ffn_mode="adapter", ffn_option="houlsby", ffn_bn=200, ffn_adapter_scalar=1.0,
                    ffn_adapter_init_option="bert"),
    "pa_ffn": dict(ffn_mode="adapter", ffn_option="parallel", ffn_bn=1024, ffn_adapter_scalar=1.0,
                   ffn_adapter_init_option="lora"),
    "scaled_pa": dict(ffn_mode="adapter", ffn_option="parallel", ffn_bn=512, ffn_adapter_scalar=4.0,
                      ffn_adapter_init_option="lora"),
    "pa_attn": dict(attn_mode="adapter", attn_option="parallel", attn_bn=30),
    "sa_attn": dict(attn_mode="adapter", attn_option="sequential", attn_bn=200),
    "mhpa": dict(attn_mode="adapter", attn_option="mh_adapter", attn_bn=30),
    "bitfit": dict(attn_mode="bitfit"),
    "prompt": dict(attn_mode="prompt_tuning", attn_bn=200),
}
