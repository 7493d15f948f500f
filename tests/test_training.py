"""Real updates through fairseq's Trainer: base weights bitwise unchanged, every delta weight moved."""
import pytest
import torch

from methods import IDS, METHODS
from tiny import tiny_dict
from trainhelp import make_trainer, toy_sample
from unifairseq.core.accounting import is_trainable_name

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
