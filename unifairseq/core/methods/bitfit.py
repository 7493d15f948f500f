"""BitFit (Ben Zaken et al. 2022): train every bias of the base model, nothing else (besides a task
head). No new module: the plan marks the base biases trainable. Count: the base's bias elements.
Export: merges (the trained biases replace the base's; no unmerge: the old biases are not kept).
"""
from __future__ import annotations

from . import register_method
from .base import Method, Spec


@register_method
class BitFit(Method):
    name = "bitfit"
    attn_modes = ("bitfit",)
    merge = "merge"
    sized = False
    unmerge_refusal = ("BitFit replaced the base biases when merging; they cannot be recovered from the merged "
                       "file. Use the base checkpoint itself")
    presets = {"bitfit": dict(attn_mode="bitfit")}

    def specs(self, cfg):
        return [Spec(self.name, "bias")]

    def formula(self, spec, shape) -> int:
        return shape.bias_params

    @staticmethod
    def trains(name: str) -> bool:
        """Is this base parameter one BitFit trains?"""
        return name.endswith("bias")
