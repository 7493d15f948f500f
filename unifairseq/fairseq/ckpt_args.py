"""The model's arguments inside a fairseq checkpoint state, new style (`cfg["model"]`) or old (`args`),
and a delta architecture's plain fairseq parent. A leaf: the exporters, the checks (deltacheck.py) and the
sharing code all read checkpoints through it, and none imports another for it."""
from __future__ import annotations

from unifairseq.fairseq.checkpoint_io import DeltaCheckpointError

# delta architecture -> plain fairseq architecture (for merged exports and a folder's family check); filled
# by models/common.py's register_presets as the architectures register
ARCH_PARENT = {}


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
    if arch not in ARCH_PARENT:
        raise DeltaCheckpointError(f"unknown delta architecture {arch!r}; cannot name its plain fairseq parent")
    return ARCH_PARENT[arch]
