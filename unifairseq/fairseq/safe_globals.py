"""Loading fairseq checkpoints under torch >= 2.6, whose torch.load defaults to weights_only=True.

fairseq's `load_checkpoint_to_cpu` calls `torch.load(f)` with no flags (so torch's default, which
TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 turns off; fairseq is not patched, so that read stays fairseq's, while
checkpoint.load_checkpoint_file always passes weights_only=True). Official checkpoints
(bart.large, mbart.cc25, roberta.base) and the ones fairseq-train writes hold a few
plain Python objects besides tensors: `argparse.Namespace` (the training args) and
fairseq's logging meters (in `extra_state`; with `--eval-bleu` they hold numpy arrays of BLEU's
n-gram counts, so numpy's array reconstruction and dtypes are allowed too); distributed training sends the loaded checkpoint from
rank 0 to the others, the config as omegaconf containers and fairseq's `_TensorPlaceholder` inside.
Rather than turning the weights-only
safety off, the exact classes are added to torch's allow-list, so every other global
in a file is still refused.
"""
import argparse

import torch


def _fairseq_checkpoint_globals():
    allowed = [argparse.Namespace]
    try:
        from fairseq.logging import meters

        allowed += [meters.AverageMeter, meters.TimeMeter, meters.StopwatchMeter, meters.MetersDict,
                    meters.SumMeter, meters.ConcatTensorMeter]
    except (ImportError, AttributeError):  # pragma: no cover - fairseq missing or changed
        pass
    try:  # distributed training broadcasts the loaded checkpoint (cfg as omegaconf) from rank 0
        import collections
        import typing

        from fairseq.distributed.utils import _TensorPlaceholder
        from omegaconf import DictConfig, ListConfig
        from omegaconf.base import ContainerMetadata, Metadata
        from omegaconf.nodes import AnyNode

        allowed += [_TensorPlaceholder, DictConfig, ListConfig, ContainerMetadata, Metadata, AnyNode,
                    typing.Any, dict, list, int, collections.defaultdict]
    except (ImportError, AttributeError):  # pragma: no cover
        pass
    try:  # --eval-bleu: fairseq logs BLEU's n-gram counts as numpy arrays, which its meters keep (extra_state)
        import numpy as np

        core = getattr(np, "_core", None) or np.core  # numpy 2 / 1
        allowed += [np.ndarray, np.dtype, core.multiarray._reconstruct]
        allowed += [type(np.dtype(t)) for t in (np.int64, np.int32, np.float64, np.float32)]
    except (ImportError, AttributeError):  # pragma: no cover
        pass
    return allowed


_REGISTERED = False


def register_safe_globals() -> None:
    """Add the classes above to torch's weights-only allow-list (idempotent). Called where fairseq
    checkpoints are loaded (user_dir, unifairseq.fairseq.register(), load_checkpoint_file), never
    at import."""
    global _REGISTERED
    add = getattr(torch.serialization, "add_safe_globals", None)
    if add is not None and not _REGISTERED:  # torch < 2.4 has no allow-list (and loads unrestricted)
        add(_fairseq_checkpoint_globals())
        _REGISTERED = True
