"""A single-delta model that serves more deltas: its own delta joins a bank on that model as an index of its
modules where they are (their names and state-dict keys stay the model's own), beside deltas read as any
bank delta is (model_bank.ModelBank.add). The hub's add_delta and the delta_bank task's --add-deltas use it."""
from __future__ import annotations

import os
from collections import OrderedDict

import torch
import torch.nn as nn

from unifairseq.core.bank import BANK_ATTR, BankError, DeltaSet
from unifairseq.core.modules import DeltaLinear
from unifairseq.fairseq.attention import DeltaMultiheadAttention
from unifairseq.fairseq.checkpoint_io import load_checkpoint_file
from unifairseq.fairseq.layers import DeltaTransformerEncoder
from unifairseq.fairseq.model_bank import _LAYERS, _STACKS, ModelBank, attach_bank, put_bias_rows


def own_delta_set(model: nn.Module) -> DeltaSet:
    """A single-delta model's own delta (its modules where they are) as a delta of a bank on that model:
    the set only indexes them by site key, so nothing is registered or saved twice and the model's
    parameter names and state-dict keys stay its own. BitFit is the exception (_move_biases_out)."""
    plan = model.delta_plan
    ds = DeltaSet(plan.cfg)
    if any(isinstance(m, DeltaLinear) and m.merged for m in model.modules()):
        raise BankError("this model's delta is merged into its weights (DeltaLinear.merge): the other deltas' "
                        "sentences would see it; unmerge it first")
    for path, m in model.named_modules():
        if path.startswith(BANK_ATTR):
            continue
        if isinstance(m, DeltaLinear) and m.delta is not None:
            ds.sites[("proj", path)] = m.delta
        elif isinstance(m, DeltaMultiheadAttention) and m.delta_out is not None:
            ds.sites[("attn_out", path)] = m.delta_out
        elif isinstance(m, _LAYERS) and getattr(m, "delta_ffn", None) is not None:
            ds.sites[("ffn", path)] = m.delta_ffn.delta_adapter
        elif isinstance(m, _STACKS):
            enc = isinstance(m, DeltaTransformerEncoder)
            for kind, attr in (("self", "delta_prefix"),) if enc else (("self", "delta_prefix_self"),
                                                                      ("cross", "delta_prefix_cross")):
                if getattr(m, attr, None) is not None:
                    ds.sites[("prefix", path, kind)] = (getattr(m, attr), plan.at("heads", kind).opts["form"])
            if enc and m.delta_prompt is not None:
                ds.sites[("prompt", path)] = m.delta_prompt
    for h, head in getattr(model, "classification_heads", {}).items():  # RoBERTa: the delta's own heads
        ds.sites[("head", h)] = head
    if plan.at("bias") is not None:
        _move_biases_out(model, plan.at("bias"), ds)
    return ds


def _move_biases_out(model: nn.Module, spec, ds: DeltaSet) -> None:
    """BitFit trained the base's own biases in place; beside other deltas, whose sentences must see the base's,
    its trained biases become per-delta bias rows of its set (as a bank's BitFit delta holds them) and the
    model's biases go back to the base file's."""
    names = put_bias_rows(ds, model, spec)  # the trained values; `ds` is not on the model yet
    originals = dict(model.__dict__.get("_base_in_place") or {})  # what a delta folder overwrote (deltafolder.py)
    if any(n not in originals for n in names):
        path = getattr(model, "base_path", None)
        if not path or not os.path.isfile(path):
            raise BankError("this model's delta trains the base's own biases in place (BitFit): to serve it beside "
                            "other deltas its base's biases are read back from the base file, which is not known "
                            f"here ({path!r}); load the delta with its base (--delta-base NAME_OR_PATH)")
        base = load_checkpoint_file(path)["model"]
        originals.update({n: base[n] for n in names if n not in originals and n in base})
    missing = [n for n in names if n not in originals]
    if missing:
        raise BankError(f"the base file {model.base_path} has no {missing[0]!r}: it is not this BitFit delta's base")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n in names:
            params[n].copy_(originals[n])


def serve_with_others(model: nn.Module, own_name: str, others: "OrderedDict[str, object]") -> ModelBank:
    """A single-delta model (its base and delta loaded) that decodes mixed batches with more deltas: a
    bank on it holding its own delta as `own_name` (bank index 0, the default) and `others` (name ->
    delta file or folder), each checked against the base as ModelBank.add checks any delta."""
    if getattr(model, "delta_plan", None) is None:
        raise BankError(f"{type(model).__name__} is not a delta model: --add-deltas needs a delta checkpoint "
                        "(--path DELTA.pt or a delta folder's model.pt)")
    own = own_delta_set(model)
    bank = attach_bank(model)
    bank.sets[own_name] = own
    bank.default = own_name
    for name, source in others.items():
        bank.add(name, source)
    bank.changed()
    return bank
