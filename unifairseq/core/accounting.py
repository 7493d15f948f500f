"""Freezing the base and honest parameter accounting, read from the plan and the method registry.

Three numbers are reported for every model:

* trainable -- what actually receives gradients and optimizer state (includes adapter
  biases, learnable scalars and the prefix reparametrization MLP);
* formula   -- the paper's count (App. B): weight matrices only, prefix counted as the
  stored vectors 2*l*d per attention sub-layer, whatever their parametrization;
* base      -- the frozen pretrained parameters; percentages are of this.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Union

import torch
import torch.nn as nn

from unifairseq.core.config import DeltaConfig
from unifairseq.core.methods import ModelShape  # noqa: F401  (re-exported: the shape the counts need)
from unifairseq.core.modules import DeltaModule, is_delta_name
from unifairseq.core.plan import DeltaPlan

PlanLike = Union[DeltaPlan, DeltaConfig]


def as_plan(delta: PlanLike) -> DeltaPlan:
    return delta if isinstance(delta, DeltaPlan) else DeltaPlan(delta)


def formula_count(delta: PlanLike, shape: ModelShape) -> int:
    """The paper's parameter count for a method on a model shape (App. B)."""
    return as_plan(delta).formula(shape)


def distinct_parameters(state: Mapping[str, object]) -> List[str]:
    """The names of a state dict's parameters as named_parameters() sees them: a tied one (RoBERTa's LM
    head output is its embedding; a checkpoint keeps the sharing, as its bytes show) once, under its first
    name, and fairseq's buffers (version counters, `_float_tensor`) not at all."""
    names, seen = [], set()
    for n, t in state.items():
        if not torch.is_tensor(t) or n.endswith(("version", "_float_tensor")):
            continue
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key not in seen:
            seen.add(key)
            names.append(n)
    return names


def is_base_name(name: str) -> bool:
    """A pretrained parameter: not a delta and not a (new, task-specific) classification head."""
    return not is_delta_name(name) and not name.startswith("classification_heads.")


def base_bias_params(model: nn.Module) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if is_base_name(n) and n.endswith("bias"))


def stored_delta_weights(model: nn.Module, delta: PlanLike) -> int:
    """The formula count read off a built model's modules (must equal `formula_count`): each delta
    module's own count of what the paper stores, plus the base parameters a plan trains in place."""
    plan = as_plan(delta)
    n = sum(m.stored_count() for m in model.modules() if isinstance(m, DeltaModule))
    n += sum(p.numel() for name, p in model.named_parameters() if is_base_name(name) and plan.is_trainable(name))
    return n


def is_trainable_name(name: str, delta: PlanLike) -> bool:
    return as_plan(delta).is_trainable(name)


def freeze_base(model: nn.Module, delta: PlanLike) -> None:
    """Only delta parameters require grad; fairseq's trainer then gives only them to the optimizer."""
    plan = as_plan(delta)
    for name, p in model.named_parameters():
        p.requires_grad_(plan.is_trainable(name))


def parameter_report(model: nn.Module, delta: PlanLike, shape: ModelShape) -> Dict[str, float]:
    plan = as_plan(delta)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    base = sum(p.numel() for n, p in model.named_parameters() if is_base_name(n))
    formula = plan.formula(shape)
    return dict(trainable=trainable, base=base, formula=formula,
                trainable_pct=100.0 * trainable / base, formula_pct=100.0 * formula / base)


def format_report(method: str, delta: PlanLike, rep: Dict[str, float]) -> str:
    return (f"unifairseq {method} [{as_plan(delta).describe()}]: trainable parameters {rep['trainable']:,} "
            f"({rep['trainable_pct']:.2f}% of the {rep['base']:,} frozen base parameters); "
            f"paper formula count {rep['formula']:,} ({rep['formula_pct']:.2f}%)")
