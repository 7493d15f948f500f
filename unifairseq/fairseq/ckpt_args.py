"""The model's arguments inside a fairseq checkpoint state, new style (`cfg["model"]`) or old (`args`),
and a delta architecture's plain fairseq parent. A leaf: the exporters and the sharing code both read
checkpoints through it, and neither imports the other for it."""
from __future__ import annotations

from unifairseq.fairseq.checkpoint import DeltaCheckpointError


def model_args(state: dict):
    """The model's args (a Namespace) from a fairseq checkpoint, new (cfg) or old (args) style."""
    cfg = state.get("cfg")
    if cfg is not None and cfg.get("model") is not None:
        return cfg["model"]
    if state.get("args") is not None:
        return state["args"]
    raise DeltaCheckpointError("the checkpoint holds no model configuration (neither cfg.model nor args)")


def set_model_arg(state: dict, name: str, value) -> None:
    for holder in (state.get("cfg", {}) or {}).get("model"), state.get("args"):
        if holder is not None:
            if isinstance(holder, dict):
                holder[name] = value
            else:
                setattr(holder, name, value)


def parent_arch(arch: str) -> str:
    from unifairseq.fairseq.models.common import ARCH_PARENT

    if arch not in ARCH_PARENT:
        raise DeltaCheckpointError(f"unknown delta architecture {arch!r}; cannot name its plain fairseq parent")
    return ARCH_PARENT[arch]
