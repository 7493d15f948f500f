"""What a method module says, in one place (see methods/__init__.py for the registry).

A method is a choice along the paper's design dimensions, attached at one or more *sites* of a
Transformer layer. A `Spec` is one attachment, as the plan (core/plan.py) builds it from the flags:

    Spec(method="lora", site="q_proj", kinds=("self", "cross"), opts={"r": 16, "alpha": 32.0, ...})

Sites (the paper's "modified representation"):
    heads                 attention heads: P_k, P_v per layer (prefix tuning, multi-head PA)
    attn_out              the attention sub-layer's output (attention adapters, Houlsby's first adapter)
    q_proj k_proj v_proj out_proj   the attention projections W_q, W_k, W_v, W_o (LoRA, DoRA, (IA)³)
    fc1 fc2               the FFN projections W_1, W_2; fc2's input is the FFN hidden activation ((IA)³)
    ffn                   the FFN sub-layer as a whole (FFN adapters: parallel reads its input)
    embed                 the encoder's input embeddings (prompt tuning)
    bias                  every base bias (BitFit)
`kinds` names the attention kinds a spec applies to: "self" (encoder and decoder self-attention) and
"cross" (encoder-decoder attention); FFN, embedding and bias sites have no kinds.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar, Dict, List, Optional, Sequence, Tuple

PROJECTION_SITES = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")  # a LinearDelta on a DeltaLinear
ATTN_SITES = ("heads", "attn_out", "q_proj", "k_proj", "v_proj", "out_proj")
FFN_SITES = ("fc1", "fc2", "ffn")
SITES = ATTN_SITES + FFN_SITES + ("embed", "bias")
ALL_KINDS = ("self", "cross")

Bad = Callable[[str, str], None]  # bad(flag_name, message) raises DeltaConfigError


@dataclass
class Spec:
    method: str
    site: str
    kinds: Tuple[str, ...] = ()
    opts: Dict[str, object] = field(default_factory=dict)

    def __post_init__(self):
        assert self.site in SITES, self.site


@dataclass
class ModelShape:
    """What the paper's formula counts need of a model (App. B; d = model dim, L = layers)."""
    d: int  # model dim
    d_ff: int  # FFN inner dim
    self_attn_sublayers: int  # encoder + decoder self-attention
    cross_attn_sublayers: int  # encoder-decoder attention
    ffn_sublayers: int
    bias_params: int = 0  # base bias elements (BitFit's count); 0 when unknown

    @classmethod
    def encoder_decoder(cls, d: int, d_ff: int, enc_layers: int, dec_layers: int, bias_params: int = 0):
        return cls(d, d_ff, enc_layers + dec_layers, dec_layers, enc_layers + dec_layers, bias_params)

    @classmethod
    def encoder_only(cls, d: int, d_ff: int, layers: int, bias_params: int = 0):
        return cls(d, d_ff, layers, 0, layers, bias_params)

    def attn(self, kinds: Sequence[str]) -> int:
        """Attention sub-layers of these kinds."""
        return sum({"self": self.self_attn_sublayers, "cross": self.cross_attn_sublayers}[k] for k in kinds)


class Method:
    """One method module's declaration. Subclasses fill the class attributes and the hooks."""

    name: ClassVar[str] = ""
    # the --attn-mode / --ffn-mode values that select this method (flags stay as they are today)
    attn_modes: ClassVar[Tuple[str, ...]] = ()
    ffn_modes: ClassVar[Tuple[str, ...]] = ()
    # --attn-option / --ffn-option values it accepts for its modes (the first one of a mode is its default)
    attn_options: ClassVar[Tuple[str, ...]] = ()
    ffn_options: ClassVar[Tuple[str, ...]] = ()
    # named presets <preset>: flag values (the architectures <preset>_<family>_<size>)
    presets: ClassVar[Dict[str, dict]] = {}
    # attribute name of its module under a host nn.Linear (linear-site methods), e.g. "delta_lora"
    module_name: ClassVar[str] = ""
    # export: "merge" (folds into the base weights, exact unmerge), "fold" (a reparametrisation that
    # export can fold into stored vectors), or "" (adds computation a plain model lacks)
    merge: ClassVar[str] = ""
    unmerge_refusal: ClassVar[str] = ""  # why a merge of this method cannot be taken back out, if it cannot
    sized: ClassVar[bool] = True  # takes --attn-bn / --ffn-bn (a length or rank) for its modes

    # ---- plan
    def selected(self, cfg) -> bool:
        """Does the (normalised) config ask for this method? Options that another method of the
        same mode owns (MH PA's `--attn-mode adapter --attn-option mh_adapter`) are not ours."""
        attn = cfg.attn_mode in self.attn_modes and (not self.attn_options or cfg.attn_option in self.attn_options)
        return attn or cfg.ffn_mode in self.ffn_modes

    def validate(self, cfg, bad: Bad) -> None:
        """Reject this method's bad flag values (called only when selected)."""

    def gate_capable(self, cfg) -> bool:
        """Can this method's Δh take --attn-composition gate_add ((1-λ)h + λΔh)?"""
        return False

    def specs(self, cfg) -> List[Spec]:
        raise NotImplementedError

    # ---- accounting
    def formula(self, spec: Spec, shape: ModelShape) -> int:
        """The paper's count of this spec's stored parameters over the whole model."""
        raise NotImplementedError

    def folded_args(self) -> dict:
        """Flag values of an exported model whose reparametrisation was folded (merge == "fold")."""
        return {}

    # ---- building (torch modules; dims are read off the host)
    def build(self, spec: Spec, **dims):
        raise NotImplementedError

    # ---- export forms in other libraries (tools/export_hf.py, tools/export_adapters.py): a method
    # declares its own, so the exporters compare no method names. None: no such form (refused there).
    def peft_form(self, spec: Spec) -> Optional[str]:
        """peft's PeftType name ("LORA", "IA3") that computes this spec as unifairseq does; None: none does."""
        return None

    def peft_tensors(self, module) -> Dict[str, object]:
        """The trained module's tensors under peft's names (after `base_model.model.<target module>.`)."""
        raise NotImplementedError(f"{self.name}: peft_form without peft_tensors")

    def peft_config(self, cfg, modules: Dict[str, object]) -> dict:
        """This method's entries of peft's adapter_config.json, in peft's order, for its trained modules
        (transformers module name -> the method's module, in export order)."""
        raise NotImplementedError(f"{self.name}: peft_form without peft_config")

    def adapterhub_form(self, spec: Spec) -> Optional[dict]:
        """This spec as an AdapterHub `adapters` config: {"config": its name, "r": bottleneck,
        "scaling": s, "refusal": why this instance is not exported or None}; None: no such form."""
        return None
