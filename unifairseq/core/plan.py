"""The plan: which method sits at which site, with which sizes -- built once per model from the
flags (a validated DeltaConfig) and read by the layers, the freezer, the accounting and export.

    plan = DeltaPlan.from_args(args)        # validates; DeltaConfigError names the flag and the fix
    plan.at("q_proj", "self")               # Spec(method="lora", site="q_proj", opts={"r": 16, ...}) or None
    plan.build(spec, in_features=..., out_features=...)   # the method's torch module for that site
"""
from __future__ import annotations

from typing import List, Optional

from unifairseq.core.config import DeltaConfig, DeltaConfigError
from unifairseq.core.methods import METHODS, Method, ModelShape, Spec
from unifairseq.core.modules import is_delta_name


class DeltaPlan:
    def __init__(self, cfg: DeltaConfig):
        cfg.validate()
        self.cfg = cfg
        self.specs: List[Spec] = [s for m in METHODS.values() if m.selected(cfg) for s in m.specs(cfg)]
        seen = {}
        for s in self.specs:
            for k in s.kinds or ("",):
                other = seen.setdefault((s.site, k), s)
                if other is not s:
                    raise DeltaConfigError(
                        f"--attn-mode {cfg.attn_mode} / --ffn-mode {cfg.ffn_mode}: {other.method} and {s.method} "
                        f"would both modify {s.site}; choose one of them for that site")

    @classmethod
    def from_args(cls, args) -> "DeltaPlan":
        return cls(DeltaConfig.from_args(args))

    # ------------------------------------------------------------ reading
    @property
    def empty(self) -> bool:
        return not self.specs

    def at(self, site: str, kind: Optional[str] = None) -> Optional[Spec]:
        for s in self.specs:
            if s.site == site and (kind is None or not s.kinds or kind in s.kinds):
                return s
        return None

    def method(self, spec: Spec) -> Method:
        return METHODS[spec.method]

    def build(self, spec: Optional[Spec], **dims):
        return None if spec is None else METHODS[spec.method].build(spec, **dims)

    @property
    def methods(self) -> List[Method]:
        return list(dict.fromkeys(METHODS[s.method] for s in self.specs))

    @property
    def prompt_len(self) -> int:
        s = self.at("embed")
        return s.opts["l"] if s is not None else 0

    # ------------------------------------------------------- what trains
    def is_trainable(self, name: str) -> bool:
        """Delta tensors, task heads (new, task-specific weights) and what a bias-site method trains."""
        if is_delta_name(name) or name.startswith("classification_heads."):
            return True
        return any(s.site == "bias" and METHODS[s.method].trains(name) for s in self.specs)

    def formula(self, shape: ModelShape) -> int:
        """The paper's parameter count (App. B) of this plan on a model shape."""
        return sum(METHODS[s.method].formula(s, shape) for s in self.specs)

    def describe(self) -> str:
        return self.cfg.describe()

    def mergeable(self) -> List[str]:
        """Why not: the methods of this plan that cannot merge into the base weights."""
        return [m.name for m in self.methods if m.merge != "merge"]
