"""Loading fairseq checkpoints under torch >= 2.6, whose torch.load defaults to weights_only=True.

fairseq's `load_checkpoint_to_cpu` calls `torch.load(f)` with no flags. Official checkpoints
(bart.large, mbart.cc25, roberta.base) and the ones fairseq-train writes hold a few
plain Python objects besides tensors: `argparse.Namespace` (the training args) and
fairseq's logging meters (in `extra_state`). Rather than turning the weights-only
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
    return allowed


def register_safe_globals() -> None:
    add = getattr(torch.serialization, "add_safe_globals", None)
    if add is not None:  # torch < 2.4 has no allow-list (and loads unrestricted by default)
        add(_fairseq_checkpoint_globals())


register_safe_globals()
