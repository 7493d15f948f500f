"""Tiny BART models trained through fairseq's own Trainer, and the toy batch they learn from."""
import torch
from fairseq.data import LanguagePairDataset
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.tasks.translation import TranslationTask
from fairseq.trainer import Trainer

from tiny import TINY, tiny_args

TRAIN_FLAGS = ["--cpu", "--optimizer", "adam", "--lr", "0.05", "--criterion", "label_smoothed_cross_entropy",
               "--label-smoothing", "0.1", "--max-tokens", "4000", "--dropout", "0.0", "--seed", "3"]


def make_trainer(arch, flags, d):
    args = tiny_args(arch, [*flags, *TRAIN_FLAGS], dims=TINY)
    cfg = convert_namespace_to_omegaconf(args)
    task = TranslationTask(cfg.task, d, d)
    model = task.build_model(cfg.model)
    criterion = task.build_criterion(cfg.criterion)
    return Trainer(cfg, task, model, criterion), model


def toy_sample(d, n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    src = [torch.cat([torch.randint(d.nspecial, len(d), (3 + i,), generator=g), torch.tensor([d.eos()])])
           for i in range(n)]
    tgt = [torch.cat([s[:-1].flip(0), torch.tensor([d.eos()])]) for s in src]  # learn to reverse
    ds = LanguagePairDataset(src, [len(s) for s in src], d, tgt, [len(t) for t in tgt], d)
    return ds.collater([ds[i] for i in range(n)])

