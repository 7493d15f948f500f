"""Real updates through fairseq's Trainer: base weights bitwise unchanged, every delta weight moved."""
import pytest
import torch
from fairseq.data import LanguagePairDataset
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.trainer import Trainer

from methods import IDS, METHODS
from tiny import TINY, tiny_args, tiny_dict
from unifairseq.core.accounting import is_trainable_name

TRAIN_FLAGS = ["--cpu", "--optimizer", "adam", "--lr", "0.05", "--criterion", "label_smoothed_cross_entropy",
               "--label-smoothing", "0.1", "--max-tokens", "4000", "--dropout", "0.0", "--seed", "3"]


def make_trainer(arch, flags, d):
    args = tiny_args(arch, [*flags, *TRAIN_FLAGS], dims=TINY)
    cfg = convert_namespace_to_omegaconf(args)
    from fairseq.tasks.translation import TranslationTask

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


@pytest.mark.parametrize("name,arch,flags,identity", METHODS, ids=IDS)
def test_only_deltas_change_under_fairseq_trainer(name, arch, flags, identity):
    d = tiny_dict()
    trainer, model = make_trainer(arch, flags, d)
    delta = model.delta_plan  # built once; is_trainable_name would rebuild it from a DeltaConfig per key
    opt_params = {id(p) for group in trainer.optimizer.optimizer.param_groups for p in group["params"]}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert opt_params == {id(p) for n, p in model.named_parameters() if n in trainable}, \
        "the optimizer must hold exactly the delta parameters"
    before = {k: v.clone() for k, v in model.full_state_dict().items()}
    sample = toy_sample(d)
    losses = []
    for _ in range(6):
        log = trainer.train_step([sample])
        losses.append(log["loss"])
    after = model.full_state_dict()
    for k, v in after.items():
        if is_trainable_name(k, delta):
            assert not torch.equal(v, before[k]), f"{name}: delta {k} did not change"
        else:
            assert torch.equal(v, before[k]), f"{name}: base {k} changed"
    assert losses[-1] < losses[0], losses
