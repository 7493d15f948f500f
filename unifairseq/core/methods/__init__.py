"""The method registry: one module per method, one entry here.

    METHODS["lora"]      -> the LoRA method object (methods/lora.py)
    method_for_module("delta_lora") -> the method whose module sits under a linear as `delta_lora`

Freezing, accounting, checkpoint key selection, export and the tests read this registry; nothing
else compares method names. Adding a method: write methods/<name>.py with a `Method` subclass, add
it to `_MODULES` below, add a row to tests/methods.py and the README.
"""
from __future__ import annotations

import importlib
from typing import Dict

from .base import ALL_KINDS, ATTN_SITES, FFN_SITES, PROJECTION_SITES, SITES, Method, ModelShape, Spec  # noqa: F401

# registry order = preset order in listings (count, bench, usage texts)
_MODULES = ("prefix", "lora", "adapter", "mhpa", "bitfit", "prompt", "ia3", "dora")

METHODS: Dict[str, Method] = {}


def register_method(cls):
    """Class decorator of a method module: adds one instance to the registry."""
    inst = cls()
    assert inst.name and inst.name not in METHODS, inst.name
    METHODS[inst.name] = inst
    return cls


for _m in _MODULES:
    importlib.import_module(f"{__name__}.{_m}")


def method_for_module(module_name: str) -> Method:
    for m in METHODS.values():
        if m.module_name == module_name:
            return m
    raise KeyError(module_name)


def attn_modes():
    return tuple(dict.fromkeys(v for m in METHODS.values() for v in m.attn_modes))


def ffn_modes():
    return tuple(dict.fromkeys(v for m in METHODS.values() for v in m.ffn_modes))
