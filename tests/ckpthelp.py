"""Checkpoint files of tiny models in the layouts fairseq and the released bases use, and a watch on
how a shared delta is read (never unpickled)."""
import contextlib
import os
import pickle

import pytest
import torch
from fairseq import checkpoint_utils
from fairseq.checkpoint_utils import torch_persistent_save
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.models import build_model
from fairseq.tasks.translation import TranslationTask
from fairseq.trainer import Trainer

from tiny import TINY, tiny_args
from trainhelp import TRAIN_FLAGS
from unifairseq.core.modules import is_delta_name
from unifairseq.fairseq.ckpt_args import ARCH_PARENT
from unifairseq.tools.tiny_base import checkpoint_state


def save_base_checkpoint(model, path):
    """The frozen base in fairseq's official checkpoint format (like bart.large/model.pt)."""
    torch_persistent_save({"args": None, "model": {k: v for k, v in model.full_state_dict().items()
                                                   if not is_delta_name(k)},
                           "optimizer_history": [], "extra_state": {}, "last_optimizer_state": None}, str(path))


def write_delta_checkpoint(model, args, tmp_path):
    """A delta checkpoint in fairseq's layout (what fairseq-train writes) and its base file."""
    base = tmp_path / "base.pt"
    save_base_checkpoint(model, base)
    model.base_path = str(base)
    ckpt = tmp_path / "delta.pt"
    torch_persistent_save({"args": args, "model": model.state_dict(), "optimizer_history": [],
                           "extra_state": {}, "last_optimizer_state": None}, str(ckpt))
    return ckpt, base


def save_delta_file(model, args, path):
    """What fairseq-train writes for a delta model: its state_dict (trained tensors + base record)."""
    torch_persistent_save({"args": args, "model": model.state_dict(), "optimizer_history": [],
                           "extra_state": {}, "last_optimizer_state": None}, str(path))


def save_plain_base(path, arch, d, style, seed=0):
    """A plain fairseq model of the delta's parent architecture, saved as released bases are (`args`,
    like bart.large/model.pt and tools/tiny_base.py) or as fairseq-train saves (`cfg`)."""
    args = tiny_args(ARCH_PARENT[arch], TRAIN_FLAGS, dims=TINY)
    task = TranslationTask(args, d, d)
    torch.manual_seed(seed)
    plain = build_model(args, task)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if style == "args":
        checkpoint_utils.torch_persistent_save(checkpoint_state(plain, args), str(path))
    else:
        cfg = convert_namespace_to_omegaconf(args)
        trainer = Trainer(cfg, task, plain, task.build_criterion(cfg.criterion))
        trainer.consolidate_optimizer()
        trainer.save_checkpoint(str(path), {})
    return plain


@contextlib.contextmanager
def no_unpickling_of(folder):
    """torch.load and pickle refuse anything inside `folder`; returns what torch.load was asked to read."""
    seen, real_load = [], torch.load
    folder = os.path.realpath(folder)

    def name_of(f):
        return os.path.realpath(f if isinstance(f, (str, os.PathLike)) else getattr(f, "name", "?"))

    def spy_load(f, *a, **kw):
        seen.append(name_of(f))
        assert not seen[-1].startswith(folder), f"torch.load on the delta folder: {seen[-1]}"
        return real_load(f, *a, **kw)

    def refuse(*a, **kw):
        raise AssertionError("pickle used while loading a shared delta")

    mp = pytest.MonkeyPatch()
    mp.setattr(torch, "load", spy_load)
    for name in ("load", "loads", "Unpickler"):
        mp.setattr(pickle, name, refuse)
    try:
        yield seen
    finally:
        mp.undo()


def trained_roberta_lora(root, base_dir: str = "base"):
    """A LoRA RoBERTa with its classification head on a tiny RoBERTa base saved as released bases are
    (ROOT/BASE_DIR/model.pt, `args` a Namespace), its deltas moved off their init, and its checkpoint as
    fairseq's Trainer writes it (ROOT/delta.pt, the args in cfg.model); ROOT/data holds the dictionaries.
    Returns (model, task, the plain base model, base path, delta path, data folder)."""
    from tiny import perturb_deltas, tiny_roberta
    from unifairseq.tools.tiny_base import build

    model, task, args = tiny_roberta("lora_attn_roberta_base", ["--attn-bn", "4", "--criterion",
                                                               "sentence_prediction", "--optimizer", "adam",
                                                               "--lr", "1e-3", "--cpu"])
    data = root / "data"
    for sub, dic in (("input0", task.source_dictionary), ("label", task.label_dictionary)):
        (data / sub).mkdir(parents=True)
        dic.save(str(data / sub / "dict.txt"))
    plain, plain_args = build("roberta", str(data / "input0"), layers=2, dim=32, ffn_dim=64, heads=4,
                              max_positions=64, seed=3)
    base = root / base_dir / "model.pt"
    base.parent.mkdir()
    torch_persistent_save(checkpoint_state(plain, plain_args), str(base))
    model.load_base(str(base))
    perturb_deltas(model)
    args.data = str(data)
    cfg = convert_namespace_to_omegaconf(args)
    trainer = Trainer(cfg, task, model, task.build_criterion(cfg.criterion))
    trainer.consolidate_optimizer()
    delta = root / "delta.pt"
    trainer.save_checkpoint(str(delta), {})
    return model, task, plain, base, delta, data
