"""Freezing the base and honest parameter accounting.

Three numbers are reported for every model:

* trainable -- what actually receives gradients and optimizer state (includes adapter
  biases, learnable scalars and the prefix reparametrization MLP);
* formula   -- the paper's count (App. B): weight matrices only, prefix counted as the
  stored vectors 2*l*d per attention sub-layer, whatever their parametrization;
* base      -- the frozen pretrained parameters; percentages are of this.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

import torch.nn as nn

from unifairseq.core.config import DeltaConfig
from unifairseq.core.modules import Bottleneck, is_delta_name
from unifairseq.core.prefix import PrefixProvider


@dataclass
class ModelShape:
    d: int  # model dim
    d_ff: int  # FFN inner dim
    attn_sublayers: int  # all attention sub-layers (enc self + dec self + cross for BART)
    self_attn_sublayers: int  # self-attention only (where Houlsby puts its first adapter)
    ffn_sublayers: int
    bias_params: int = 0  # base bias elements (BitFit's count); 0 when unknown

    @classmethod
    def encoder_decoder(cls, d: int, d_ff: int, enc_layers: int, dec_layers: int, bias_params: int = 0):
        return cls(d, d_ff, enc_layers + 2 * dec_layers, enc_layers + dec_layers, enc_layers + dec_layers,
                   bias_params)

    @classmethod
    def encoder_only(cls, d: int, d_ff: int, layers: int, bias_params: int = 0):
        return cls(d, d_ff, layers, layers, layers, bias_params)


def formula_count(delta: DeltaConfig, shape: ModelShape) -> int:
    """The paper's parameter count for a method on a model shape (App. B)."""
    d, n = shape.d, 0
    if delta.attn_mode in ("prefix", "prefix_nomlp"):
        n += 2 * delta.attn_bn * d * shape.attn_sublayers  # P_k, P_v: 2*l*d
    elif delta.attn_mode == "adapter":
        n += 2 * delta.attn_bn * d * shape.attn_sublayers  # W_down, W_up (MH PA: P_k, P_v)
    elif delta.attn_mode == "lora":
        n += 4 * delta.attn_bn * d * shape.attn_sublayers  # W_q and W_v, 2*r*d each
    elif delta.attn_mode == "prompt_tuning":
        n += delta.attn_bn * d
    elif delta.attn_mode == "bitfit":
        n += shape.bias_params
    if delta.ffn_mode == "adapter":
        n += 2 * delta.ffn_bn * d * shape.ffn_sublayers
        if delta.ffn_option == "houlsby":
            n += 2 * delta.ffn_bn * d * shape.self_attn_sublayers
    elif delta.ffn_mode == "lora":
        n += 2 * delta.ffn_bn * (d + shape.d_ff) * shape.ffn_sublayers  # 10*r*d when d_ff = 4d
    return n


def is_base_name(name: str) -> bool:
    """A pretrained parameter: not a delta and not a (new, task-specific) classification head."""
    return not is_delta_name(name) and not name.startswith("classification_heads.")


def base_bias_params(model: nn.Module) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if is_base_name(n) and n.endswith("bias"))


def stored_delta_weights(model: nn.Module, delta: DeltaConfig) -> int:
    """The formula count read off a built model's modules (must equal `formula_count`)."""
    n = 0
    for m in model.modules():
        if isinstance(m, Bottleneck):
            n += m.W_down.weight.numel() + m.W_up.weight.numel()
        elif isinstance(m, PrefixProvider):
            n += m.num_layers * 2 * m.length * m.dim
    for name, p in model.named_parameters():
        if name.endswith("delta_prompt.weight"):
            n += p.numel()
    if delta.bitfit:
        n += base_bias_params(model)
    return n


def is_trainable_name(name: str, delta: DeltaConfig) -> bool:
    if is_delta_name(name) or name.startswith("classification_heads."):
        return True  # task heads are new, task-specific weights: always trained
    if delta.bitfit and name.endswith("bias"):
        return True
    return False


def freeze_base(model: nn.Module, delta: DeltaConfig) -> None:
    """Only delta parameters require grad; fairseq's trainer then gives only them to the optimizer."""
    for name, p in model.named_parameters():
        p.requires_grad_(is_trainable_name(name, delta))


def parameter_report(model: nn.Module, delta: DeltaConfig, shape: ModelShape) -> Dict[str, float]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    base = sum(p.numel() for n, p in model.named_parameters() if is_base_name(n))
    return dict(trainable=trainable, base=base, formula=formula_count(delta, shape),
                trainable_pct=100.0 * trainable / base, formula_pct=100.0 * formula_count(delta, shape) / base)


def format_report(method: str, delta: DeltaConfig, rep: Dict[str, float]) -> str:
    return (f"unifairseq {method} [{delta.describe()}]: trainable parameters {rep['trainable']:,} "
            f"({rep['trainable_pct']:.2f}% of the {rep['base']:,} frozen base parameters); "
            f"paper formula count {rep['formula']:,} ({rep['formula_pct']:.2f}%)")
