"""The delta bank on one fairseq model (ModelBank): add / remove deltas, read delta files, build a
delta's modules at the model's sites. A delta model of N deltas (models/: --bank-deltas, the bank_*
architectures) builds on this module; the API that also builds a bank model from a base file is unifairseq.fairseq.bank.

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
from unifairseq.core.bases import fingerprint_version, same_content
from unifairseq.core.bank import BANK_ATTR, Bank, BankError, DeltaSet
from unifairseq.core.config import DeltaConfig
from unifairseq.core.methods import METHODS
from unifairseq.core.plan import DeltaPlan
from unifairseq.core.modules import DeltaLinear
from unifairseq.fairseq.attention import DeltaMultiheadAttention
from unifairseq.fairseq.checkpoint_io import fingerprint
from unifairseq.fairseq.deltacheck import check_dictionary
from unifairseq.fairseq.deltaread import delta_source, parse_bank_deltas, read_delta
from unifairseq.fairseq.layers import (DeltaDecoderLayer, DeltaEncoderLayer, DeltaTransformerDecoder,
                                       DeltaTransformerEncoder)
from unifairseq.fairseq.sites import DeltaLayerNorm

NAME_RE = re.compile(r"^[A-Za-z0-9_\-]+$")


# ---------------------------------------------------------------- the model's flags
def add_bank_args(parser) -> None:
    parser.add_argument("--bank-save-full", action="store_true",
                        help="write the base into checkpoints too (default: the bank's deltas and the base's record)")
    parser.add_argument("--bank-default", type=str, metavar="NAME",
                        help="the delta of sentences that name none (default: none; a one-delta bank uses it)")
    parser.add_argument("--bank-deltas", type=str, metavar="NAME=PATH_OR_PRESET,...",
                        help="a model of several deltas (a bank), in bank-index order: a delta file, or a preset "
                             "(PRESET[:key=value...], e.g. mam:attn_bn=16) for a fresh trainable delta")


def is_bank_args(args) -> bool:
    """A model of N deltas in a bank: a bank_* architecture (aliases of delta_*), or --bank-deltas given."""
    return str(getattr(args, "arch", "")).startswith("bank_") or getattr(args, "bank_deltas", None) is not None


def fill_bank(model, args) -> None:
    """The deltas of --bank-deltas on a model just built (attach_bank ran)."""
    start = getattr(args, "finetune_from_model", None) or getattr(args, "restore_file", None)
    named = start and os.path.basename(start) != "checkpoint_last.pt"
    for name, source in parse_bank_deltas(getattr(args, "bank_deltas", None) or "").items():
        # fairseq loads the start checkpoint (the base, or the bank checkpoint being resumed) after
        # build_model: a delta file's tensors and its base check wait for it (load_state_dict)
        model.bank.add(name, delta_source(source), after_base=bool(named) and model.bank.base_path is None)
    if getattr(args, "bank_default", None):
        model.bank.index(args.bank_default)  # a name the bank has, or the error naming those it has
        model.bank.default = args.bank_default


# ---------------------------------------------------------------- the model side
class ModelBank(Bank):
    """The bank of one model: adds and removes DeltaSets built for that model's sites."""

    def __init__(self, model: nn.Module):
        super().__init__(getattr(model, BANK_ATTR))
        object.__setattr__(self, "_model", model)  # plain reference
        self.allow_base_mismatch = False
        self.records: Dict[str, dict] = {}  # name -> what the delta records of its base (deltaread.read_delta)
        self.pending: "OrderedDict[str, tuple]" = OrderedDict()  # add(after_base=True): loaded by load_pending

    @property
    def base_path(self) -> Optional[str]:
        """Where the base weights came from: the model's own record (DeltaCheckpointMixin.base_path)."""
        return getattr(self._model, "base_path", None)

    @base_path.setter
    def base_path(self, path: Optional[str]) -> None:
        self._model.base_path = path

    def from_base(self, state_dict, prefix: str = "") -> "Dict[str, torch.Tensor]":
        """{key: value} of the bank's tensors that start from the base in `state_dict` (BitFit's biases, DoRA's
        magnitude): what a fresh delta of the bank holds on that base (as core/modules.base_init_values)."""
        out = {}
        for dname, ds in self.sets.items():
            at = f"{prefix}{BANK_ATTR}.{dname}."
            for key, m in ds.sites.items():
                if key[0] == "bias" and prefix + key[1] in state_dict:  # BitFit trains the base's own biases
                    out[at + key[1]] = state_dict[prefix + key[1]].clone()
                if key[0] == "proj" and prefix + key[1] + ".weight" in state_dict:
                    for pname, value in m.from_base(state_dict[prefix + key[1] + ".weight"]).items():
                        out[f"{at}{key[1]}.{m.module_name}.{pname}"] = value
        return out

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
            cfg, tensors, record = delta.validate(), None, {}
        else:
            cfg, tensors, record = read_delta(delta)
        ds = build_delta_set(self._model, cfg)
        if tensors is not None:
            self._heads_of(ds, tensors)
            tensors = self._fit(name, ds, tensors)
            if after_base:
                self.pending[name] = (record, tensors, delta)
            else:
                self._check_base(name, cfg, record, delta)
                ds.load_state_dict(tensors, strict=True)
        dev_dtype = next((p for n, p in self._model.named_parameters() if not n.startswith(BANK_ATTR)), None)
        if dev_dtype is not None:
            ds.to(device=dev_dtype.device, dtype=dev_dtype.dtype)
        for p in ds.parameters():
            p.requires_grad_(True)
        ds.train(self._model.training)
        self.sets[name] = ds
        self.records[name] = record
        self.changed()
        return self.index(name)

    def load_pending(self, skip=()) -> None:
        """The tensors of the deltas added with after_base=True, checked against the base now loaded
        (names in `skip`: a bank checkpoint being resumed holds their trained values, which win)."""
        pending, self.pending = self.pending, OrderedDict()
        for name, (record, tensors, source) in pending.items():
            if name in skip or name not in self.sets:
                continue
            self._check_base(name, self.sets[name].config, record, source)
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

    def _check_base(self, name, cfg, record, source) -> None:
        """The delta's base is this bank's (by the content fingerprint it records, when the base's is known,
        else by the plan fingerprint), and its dictionaries are the task's (deltacheck.check_dictionary)."""
        where = f"delta {name!r} ({source if isinstance(source, str) else 'in memory'})"
        if record.get("dictionary") is not None or isinstance(source, str):
            # files from before the record have no dictionary entry at all: a warning, as for a model's own delta
            check_dictionary(self._model, where, record.get("dictionary"), legacy_ok=record.get("dictionary") is None)
        have = getattr(self._model, "base_contents", None)
        if record.get("base_content") and have:
            if not same_content(record["base_content"], have) and not self.allow_base_mismatch:
                got = have.get(fingerprint_version(record["base_content"]), "?")
                raise BankError(f"{where} was trained on another base: it records base {record.get('base_name')!r} "
                                f"with content fingerprint {record['base_content'][:16]}…, this bank's base has "
                                f"{got[:16]}…; load it onto a bank of its own base, or set "
                                "model.bank.allow_base_mismatch = True to force it")
            return
        fp = record.get("plan_fingerprint")
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
        self.records.pop(name, None)
        if self.default == name:
            self.default = None
        self.changed()

    def delta_state(self, name: str) -> "OrderedDict[str, torch.Tensor]":
        """This delta's tensors at single-delta model keys (what its delta checkpoint holds)."""
        return self.sets[self.names[self.index(name)]].state_dict()

    def heads(self, name: str) -> Dict[str, int]:
        """A delta's classification heads (RoBERTa): head name -> classes."""
        ds = self.sets[self.names[self.index(name)]]
        return {k[1]: int(m.out_proj.weight.size(0)) for k, m in ds.sites.items() if k[0] == "head"}

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
        put_bias_rows(ds, model, spec)
    return ds


def put_bias_rows(ds: DeltaSet, model: nn.Module, spec) -> list:
    """A bias-site method's rows in `ds`: a copy of each base bias it trains (BitFit), at the base parameter's
    name; returns those names."""
    names = []
    for name, p in model.named_parameters():
        if not name.startswith(BANK_ATTR) and is_base_name(name) and METHODS[spec.method].trains(name):
            ds.put(name, nn.Parameter(p.detach().clone()), ("bias", name))
            names.append(name)
    return names


def _put_projection(ds: DeltaSet, plan: DeltaPlan, spec, path: str, host: nn.Linear) -> None:
    if spec is None:
        return
    delta = plan.build(spec, in_features=host.in_features, out_features=host.out_features)
    delta.init_from_base(host.weight)  # DoRA's magnitude starts from this base (a loaded delta overwrites it)
    ds.put(f"{path}.{delta.module_name}", delta, ("proj", path))
