"""The delta bank on one fairseq model (ModelBank): add / remove deltas, read delta files, build a
delta's modules at the model's sites. The bank architectures (models/bank.py, models/bank_roberta.py)
build on this module; the API that also builds a bank model from a base file is unifairseq.fairseq.bank.

A delta of a bank is a `DeltaSet` (core/bank.py) whose modules sit at their single-delta model
paths, so a delta checkpoint loads into it strictly (every key, every shape) and
`model.bank.delta_state(name)` gives back exactly what a single-delta model would save.

Refused (one-line `BankError` naming the delta and the fix):
  * a delta trained on another base (its recorded base fingerprint differs from the bank's base,
    computed with the delta's own plan): load it onto its own base, or allow_base_mismatch=True;
  * a delta of another architecture or dictionary (a tensor of another shape, or keys the bank's
    model does not have, e.g. an mBART or RoBERTa delta on a BART bank);
  * a name that is empty, has a '.', or is already in the bank.
Any mix of methods, sizes, prefix lengths and head forms is served in one batch; nothing else is refused.
"""
from __future__ import annotations

import os
import re
from collections import OrderedDict
from typing import Dict, Optional, Union

import torch
import torch.nn as nn

from unifairseq.core.accounting import is_base_name
from unifairseq.core.bank import Bank, BankError, DeltaSet
from unifairseq.core.config import DeltaConfig
from unifairseq.core.methods import METHODS
from unifairseq.core.plan import DeltaPlan
from unifairseq.core.presets import PRESETS
from unifairseq.core.modules import DeltaLinear
from unifairseq.fairseq.attention import DeltaMultiheadAttention
from unifairseq.fairseq.checkpoint_io import (BASE_PATH_KEY, FINGERPRINT_KEY, INFO_KEY, fingerprint,
                                              load_checkpoint_file, tensor_to_str)
from unifairseq.fairseq.layers import (DeltaDecoderLayer, DeltaEncoderLayer, DeltaTransformerDecoder,
                                       DeltaTransformerEncoder)
from unifairseq.fairseq.sites import DeltaLayerNorm

BANK_ATTR = "delta_bank"  # the ModuleDict of DeltaSets on the model (a delta_* name: trainable, never base)
NAME_RE = re.compile(r"^[A-Za-z0-9_\-]+$")


# ---------------------------------------------------------------- reading a delta
def read_delta(source) -> "tuple[DeltaConfig, Dict[str, torch.Tensor], Optional[str]]":
    """The ONE place deltas are read: (config, tensors at single-model keys, recorded base fingerprint).
    `source`: a delta .pt (load_checkpoint_file: never runs code), a safetensors delta folder, or an
    in-memory state {"cfg": DeltaConfig or dict or args, "model": tensors}."""
    if isinstance(source, str) and os.path.isdir(source):
        # a shared delta folder (core/deltafile.py): JSON + safetensors, validated, nothing unpickled.
        # Its method flags are under "delta" (after the prefix fold attn_mode is prefix_nomlp, which the
        # folded tensors fit); the bank checks the plan-dependent fingerprint (fingerprint() below, as
        # .pt deltas record it), which the folder keeps as base.plan_fingerprint.
        from unifairseq.core.deltafile import DeltaFileError, read_delta as read_folder

        try:
            config, tensors = read_folder(source)
        except DeltaFileError as e:
            raise BankError(str(e)) from None
        return (_config(config["delta"], source), OrderedDict(tensors),
                config["base"].get("plan_fingerprint") or None)
    state = load_checkpoint_file(source) if isinstance(source, str) else source
    args = state.get("cfg") or state.get("args")
    if isinstance(args, dict) and "model" in args and not isinstance(args["model"], torch.Tensor):
        args = args["model"]  # a fairseq checkpoint's cfg: the model's namespace
    tensors = OrderedDict(state["model"])
    fp = tensors.pop(FINGERPRINT_KEY, None)
    tensors.pop(BASE_PATH_KEY, None)
    tensors.pop(INFO_KEY, None)  # the base's name/content record: the plan fingerprint above is what is checked
    return _config(args, source), tensors, (tensor_to_str(fp) if fp is not None else None)


def _config(args, source) -> DeltaConfig:
    if isinstance(args, DeltaConfig):
        return args.validate()
    if isinstance(args, dict):
        fields = DeltaConfig.__dataclass_fields__
        return DeltaConfig(**{k: v for k, v in args.items() if k in fields and v is not None}).validate()
    if args is None:
        raise BankError(f"delta {source!r} records no configuration (no 'args'/'cfg'): it was not written by a "
                        "unifairseq delta model")
    return DeltaConfig.from_args(args)


def preset_config(spec: str) -> DeltaConfig:
    """`PRESET[:key=value...]`, e.g. `mam:attn_bn=16:ffn_bn=64` (keys: DeltaConfig fields or flag names)."""
    name, *overrides = spec.split(":")
    if name not in PRESETS:
        raise BankError(f"unknown preset {name!r} in --bank-deltas; choose a delta file or one of {', '.join(PRESETS)}")
    values = dict(PRESETS[name])
    for item in overrides:
        key, _, value = item.partition("=")
        key = key.strip().lstrip("-").replace("-", "_")
        if key not in DeltaConfig.__dataclass_fields__ or not value:
            raise BankError(f"--bank-deltas {spec!r}: {item!r} is not KEY=VALUE with KEY a delta flag "
                            "(attn_bn, ffn_bn, mid_dim, lora_alpha, ...)")
        kind = DeltaConfig.__dataclass_fields__[key].type
        values[key] = int(value) if kind == "int" else float(value) if kind == "float" else value
    return DeltaConfig(**values).validate()


def parse_bank_deltas(text: str) -> "OrderedDict[str, str]":
    """`name=PATH_OR_PRESET,...` -> {name: source}."""
    out = OrderedDict()
    for item in filter(None, (t.strip() for t in (text or "").split(","))):
        name, eq, source = item.partition("=")
        if not eq or not source:
            raise BankError(f"--bank-deltas: {item!r} is not NAME=PATH_OR_PRESET (e.g. sum=mam,mt=lora_attn)")
        if name in out:
            raise BankError(f"--bank-deltas: the name {name!r} appears twice; give each delta its own name")
        out[name] = source
    return out


# ---------------------------------------------------------------- the model side
class ModelBank(Bank):
    """The bank of one model: adds and removes DeltaSets built for that model's sites."""

    def __init__(self, model: nn.Module):
        super().__init__(getattr(model, BANK_ATTR))
        object.__setattr__(self, "_model", model)  # plain reference
        self.allow_base_mismatch = False
        self.base_path: Optional[str] = None  # where the base weights came from (bank checkpoints record it)
        self.pending: "OrderedDict[str, tuple]" = OrderedDict()  # add(after_base=True): loaded by load_pending

    def base_state(self):
        return OrderedDict((k, v) for k, v in nn.Module.state_dict(self._model).items()
                           if not k.startswith(BANK_ATTR + "."))

    def add(self, name: str, delta: Union[str, dict, DeltaConfig], fresh: bool = False,
            after_base: bool = False) -> int:
        """Add a delta (a file, an in-memory state, or a DeltaConfig for a fresh trainable one);
        returns its bank index. Only this delta's tensors are created or read. `after_base`: the base is
        not loaded yet (fairseq-train --finetune-from-model/--restore-file BASE builds the model, then loads
        BASE): the delta's modules are built now (bank order), its tensors and its base check wait for
        `load_pending()`, which the model calls once the base is in."""
        if not name or not NAME_RE.match(name):
            raise BankError(f"delta name {name!r}: use letters, digits, '_' or '-' (no '.'; it is a module name)")
        if name in self.sets:
            raise BankError(f"a delta named {name!r} is already in the bank; remove it first or choose another name")
        if isinstance(delta, DeltaConfig):
            cfg, tensors, fp = delta.validate(), None, None
        else:
            cfg, tensors, fp = read_delta(delta)
        ds = build_delta_set(self._model, cfg)
        if tensors is not None:
            self._heads_of(ds, tensors)
            tensors = self._fit(name, ds, tensors)
            if after_base:
                self.pending[name] = (fp, tensors, delta)
            else:
                self._check_base(name, cfg, fp, delta)
                ds.load_state_dict(tensors, strict=True)
        dev_dtype = next((p for n, p in self._model.named_parameters() if not n.startswith(BANK_ATTR)), None)
        if dev_dtype is not None:
            ds.to(device=dev_dtype.device, dtype=dev_dtype.dtype)
        for p in ds.parameters():
            p.requires_grad_(True)
        ds.train(self._model.training)
        self.sets[name] = ds
        self.changed()
        return self.index(name)

    def load_pending(self, skip=()) -> None:
        """The tensors of the deltas added with after_base=True, checked against the base now loaded
        (names in `skip`: a bank checkpoint being resumed holds their trained values, which win)."""
        pending, self.pending = self.pending, OrderedDict()
        for name, (fp, tensors, source) in pending.items():
            if name in skip or name not in self.sets:
                continue
            self._check_base(name, self.sets[name].config, fp, source)
            with torch.no_grad():
                self.sets[name].load_state_dict(tensors, strict=True)
        self.changed()

    @staticmethod
    def _fit(name, ds: DeltaSet, tensors) -> dict:
        """The tensors that fill `ds`, or the error saying why they cannot (another model)."""
        own = ds.state_dict()
        extra = [k for k in tensors if k not in own and not k.endswith("version")]
        missing = [k for k in own if k not in tensors]
        if extra or missing:
            raise BankError(f"delta {name!r} does not fit this bank's model: "
                            + (f"it has {extra[0]!r}, which the model lacks" if extra else
                               f"it lacks {missing[0]!r}") + " (another architecture, family or method "
                            "version?); load it onto a bank of the model it was trained on")
        for k, v in tensors.items():
            if k in own and tuple(own[k].shape) != tuple(v.shape):
                raise BankError(f"delta {name!r} does not fit this bank's model: {k} has shape "
                                f"{tuple(v.shape)} there and {tuple(own[k].shape)} here (another architecture "
                                "or dictionary?)")
        return {k: v for k, v in tensors.items() if k in own}

    def _heads_of(self, ds: DeltaSet, tensors) -> None:
        """Classification heads a delta file carries (RoBERTa), built to the sizes stored there."""
        heads = sorted({k.split(".")[1] for k in tensors if k.startswith("classification_heads.")})
        make = getattr(self._model, "make_classification_head", None)
        if heads and make is None:
            raise BankError(f"this delta carries classification heads ({', '.join(heads)}), which this bank's "
                            "model has no place for; load it onto a bank_roberta model")
        for h in heads:
            out = tensors[f"classification_heads.{h}.out_proj.weight"]
            ds.put(f"classification_heads.{h}", make(out.size(0), out.size(1)), ("head", h))

    def add_head(self, name: str, head_name: str, head: nn.Module) -> None:
        """A (fresh) classification head on one delta of the bank."""
        p = next((p for n, p in self._model.named_parameters() if not n.startswith(BANK_ATTR)), None)
        self.sets[self.names[self.index(name)]].put(f"classification_heads.{head_name}",
                                                    head.to(p.device, p.dtype), ("head", head_name))
        self.changed()

    def _check_base(self, name, cfg, fp, source) -> None:
        if fp is None:
            return
        own = fingerprint(self.base_state(), DeltaPlan(cfg))
        if own != fp and not self.allow_base_mismatch:
            raise BankError(f"delta {name!r} ({source if isinstance(source, str) else 'in memory'}) was trained on "
                            f"another base: it records base fingerprint {fp[:16]}…, this bank's base has "
                            f"{own[:16]}…; load it onto a bank of its own base, or set "
                            "model.bank.allow_base_mismatch = True to force it")

    def remove(self, name: str) -> None:
        self.index(name)
        del self.sets[name]
        if self.default == name:
            self.default = None
        self.changed()

    def delta_state(self, name: str) -> "OrderedDict[str, torch.Tensor]":
        """This delta's tensors at single-delta model keys (what its delta checkpoint holds)."""
        return self.sets[self.names[self.index(name)]].state_dict()

    def delta_config(self, name: str) -> DeltaConfig:
        return self.sets[self.names[self.index(name)]].config

    def nbytes(self, name: Optional[str] = None) -> int:
        sets = [self.sets[name]] if name is not None else list(self.sets.values())
        return sum(p.numel() * p.element_size() for s in sets for p in s.parameters())


def _stack_of(path: str) -> str:
    return path.split(".layers.")[0]


def empty_plan() -> DeltaPlan:
    """The plan a bank model's layers are built with: no delta of their own, every site served by the bank."""
    return DeltaPlan(DeltaConfig())


_LAYERS = (DeltaEncoderLayer, DeltaDecoderLayer)
_STACKS = (DeltaTransformerEncoder, DeltaTransformerDecoder)


def attach_bank(model: nn.Module) -> ModelBank:
    """Once, after fairseq built the model on the delta layers (empty_plan): name every site, give it
    the bank, freeze the base."""
    setattr(model, BANK_ATTR, nn.ModuleDict())
    bank = ModelBank(model)
    object.__setattr__(model, "bank", bank)
    for path, m in list(model.named_modules()):
        if type(m) is nn.LayerNorm and "lm_head" not in path:  # BitFit's layer-norm biases per sample
            new = DeltaLayerNorm.swap(m, path)
            parent, _, attr = path.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attr, new)
            m = new
        if isinstance(m, (DeltaLinear, DeltaMultiheadAttention, DeltaLayerNorm) + _STACKS):
            m.path = path
            object.__setattr__(m, "_bank", bank)
        if isinstance(m, DeltaMultiheadAttention):
            m.prefix_key = ("prefix", _stack_of(path), m.kind)
        if isinstance(m, _LAYERS):
            m.ffn_site.path, m.ffn_site.bank = path, bank
    for p in model.parameters():
        p.requires_grad_(False)
    return bank


def own_delta_set(model: nn.Module) -> DeltaSet:
    """A single-delta model's own delta (its modules where they are) as a delta of a bank on that model:
    the set only indexes them by site key, so nothing is registered or saved twice and the model's
    parameter names and state-dict keys stay its own."""
    plan = model.delta_plan
    if plan.at("bias") is not None:
        raise BankError("a delta that trains the base's own biases in place (BitFit) cannot share its model with "
                        "other deltas: their sentences would see its biases; serve it from a bank model "
                        "(unifairseq-bank build) instead")
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
    return ds


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
    bank.base_path = getattr(model, "base_path", None)
    for name, source in others.items():
        bank.add(name, source)
    bank.changed()
    return bank


def build_delta_set(model: nn.Module, cfg: DeltaConfig) -> DeltaSet:
    """The modules of one delta at the model's sites, at the paths a single-delta model gives them."""
    plan = DeltaPlan(cfg)
    ds = DeltaSet(cfg)
    for path, m in model.named_modules():
        if path.startswith(BANK_ATTR):
            continue
        if isinstance(m, DeltaMultiheadAttention):
            for pname in ("q_proj", "k_proj", "v_proj", "out_proj"):
                _put_projection(ds, plan, plan.at(pname, m.kind), f"{path}.{pname}", getattr(m, pname))
            spec = plan.at("attn_out", m.kind)
            if spec is not None:
                ds.put(f"{path}.delta_out", plan.build(spec, dim=m.embed_dim), ("attn_out", path))
        elif isinstance(m, _LAYERS):
            for pname in ("fc1", "fc2"):
                _put_projection(ds, plan, plan.at(pname), f"{path}.{pname}", getattr(m, pname))
            spec = plan.at("ffn")
            if spec is not None:
                site = plan.build(spec, dim=m.fc1.in_features)
                ds.put(f"{path}.delta_ffn", site)
                ds.sites[("ffn", path)] = site.delta_adapter  # Adapter.forward(h_out, x_in): the vmapped call
        elif isinstance(m, _STACKS):
            enc = isinstance(m, DeltaTransformerEncoder)
            for kind in ("self",) if enc else ("self", "cross"):
                spec = plan.at("heads", kind)
                attn = getattr(m.layers[0], "self_attn" if kind == "self" else "encoder_attn", None)
                if spec is None or attn is None:
                    continue
                prov = plan.build(spec, num_layers=len(m.layers), dim=attn.embed_dim, heads=attn.num_heads)
                ds.put(f"{path}.delta_prefix" + ("" if enc else f"_{kind}"), prov)
                ds.sites[("prefix", path, kind)] = (prov, spec.opts["form"])
            spec = plan.at("embed")
            if enc and spec is not None:
                ds.put(f"{path}.delta_prompt", plan.build(spec, dim=m.embed_tokens.embedding_dim), ("prompt", path))
    spec = plan.at("bias")
    if spec is not None:
        for name, p in model.named_parameters():
            if not name.startswith(BANK_ATTR) and is_base_name(name) and METHODS[spec.method].trains(name):
                ds.put(name, nn.Parameter(p.detach().clone()), ("bias", name))
    return ds


def _put_projection(ds: DeltaSet, plan: DeltaPlan, spec, path: str, host: nn.Linear) -> None:
    if spec is None:
        return
    delta = plan.build(spec, in_features=host.in_features, out_features=host.out_features)
    delta.init_from_base(host.weight)  # DoRA's magnitude starts from this base (a loaded delta overwrites it)
    ds.put(f"{path}.{delta.module_name}", delta, ("proj", path))


def delta_source(source: str):
    """A --bank-deltas value: an existing file/folder is a delta to load, anything else a preset."""
    return source if os.path.exists(source) else preset_config(source)
