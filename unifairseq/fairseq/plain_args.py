"""Checkpoints that plain fairseq loads under torch >= 2.6 with nothing allow-listed.

torch's default `torch.load` is weights-only: besides tensors it rebuilds only builtin containers and
values, and `collections.OrderedDict` -- including an OrderedDict's instance `__dict__` (the BUILD
opcode, which torch restricts to Tensor, Parameter and OrderedDict). An `argparse.Namespace` (what
fairseq 0.12's released files and fairseq-train's `cfg.model` hold) is refused as
`Unsupported global: argparse.Namespace` unless the user allow-lists it.

fairseq 0.12's BART needs its arguments as a flat Namespace (`upgrade_state_dict_named` reads
`self.args.task`, which a DictConfig `cfg.model` loses in TransformerConfig.from_namespace), so the
args cannot become a plain dict. They are stored instead as an empty OrderedDict whose instance
`__dict__` holds the Namespace's attributes: fairseq reads `state["args"]` only through attribute
access, setattr/delattr and `vars()` (load_checkpoint_to_cpu, _upgrade_state_dict,
convert_namespace_to_omegaconf, which builds a real Namespace from `vars(args)`), all of which an
OrderedDict's instance attributes answer. unifairseq's own loader turns it back into a Namespace
(`namespace_args`), so its readers see what they always saw.

A leaf module: stdlib and torch only.
"""
from __future__ import annotations

import argparse
import enum
from collections import OrderedDict
from typing import List

import torch

# what torch's weights-only unpickler rebuilds without any allow-listed global
_LEAVES = (type(None), bool, int, float, complex, str, bytes, torch.Tensor, torch.Size, torch.dtype,
           torch.device)


def _plain(v):
    """A builtin form of one argument value (an enum as its value, e.g. fairseq's ChoiceEnum defaults)."""
    if isinstance(v, enum.Enum):
        v = v.value
    if isinstance(v, (list, tuple)):
        return type(v)(_plain(x) for x in v) if type(v) in (list, tuple) else [_plain(x) for x in v]
    if isinstance(v, dict):
        return {_plain(k): _plain(x) for k, x in v.items()}
    for t in (bool, int, float, str):  # bool first: it is an int; str/int subclasses as the builtin
        if isinstance(v, t):
            return t(v)
    return v


def _has_namespace(obj) -> bool:
    if isinstance(obj, argparse.Namespace):
        return True
    if isinstance(obj, dict):
        return any(_has_namespace(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_has_namespace(v) for v in obj)
    return False


def args_as_ordered_dict(ns: argparse.Namespace) -> OrderedDict:
    """The Namespace's attributes on an empty OrderedDict (module docstring: why this form)."""
    a = OrderedDict()
    a.__dict__.update({k: _plain(v) for k, v in vars(ns).items()})
    return a


def primitive_args(state: dict) -> dict:
    """A shallow copy of fairseq checkpoint `state` with its model args in the OrderedDict form.

    Old-style files (`args`, as bart.large) keep that layout. fairseq-train's files (`args` None, the
    flat Namespace in `cfg["model"]`, with Namespaces possible in cfg.task/optimizer/...) become the
    old style: fairseq rebuilds the whole cfg from `args` when it is there (load_model_ensemble_and_task,
    _upgrade_state_dict), while a DictConfig cannot hold the OrderedDict form (OmegaConf takes it for
    an empty mapping). A cfg without any Namespace (a dataclass model) stays as it is."""
    new = dict(state)
    args, cfg = state.get("args"), state.get("cfg")
    if args is None and cfg is not None and isinstance(cfg.get("model"), argparse.Namespace):
        args = cfg["model"]
    if isinstance(args, argparse.Namespace):
        new["args"] = args_as_ordered_dict(args)
        if _has_namespace(cfg):
            new["cfg"] = None
    return new


def namespace_args(state: dict) -> dict:
    """The reverse of primitive_args, in place: `args` in the OrderedDict form becomes a Namespace again."""
    args = state.get("args")
    if type(args) is OrderedDict and not len(args) and vars(args):
        state["args"] = argparse.Namespace(**vars(args))
    return state


def unloadable_objects(obj, where: str = "state") -> List[str]:
    """Where `obj` holds something torch's weights-only load refuses with no global allow-listed
    ("state['args']: argparse.Namespace"); [] when it loads under plain torch's defaults."""
    if isinstance(obj, _LEAVES):
        return []
    if type(obj) in (dict, OrderedDict):
        out = [f"{where}: a {type(k).__name__} key" for k in obj if not isinstance(k, _LEAVES)]
        for k, v in obj.items():
            out += unloadable_objects(v, f"{where}[{k!r}]")
        if type(obj) is OrderedDict:
            for k, v in vars(obj).items():
                out += unloadable_objects(v, f"{where}.{k}")
        return out
    if type(obj) in (list, tuple, set):
        return [p for i, v in enumerate(obj) for p in unloadable_objects(v, f"{where}[{i}]")]
    return [f"{where}: {type(obj).__module__}.{type(obj).__qualname__}"]
