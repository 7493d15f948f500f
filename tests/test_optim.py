"""`--optimizer torch_adam` (unifairseq.fairseq.optim): the same updates as fairseq's own `--optimizer adam`."""
import pytest
import torch

import unifairseq.fairseq.optim  # noqa: F401  (registers torch_adam, as user_dir/ does)
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.tasks.translation import TranslationTask
from fairseq.trainer import Trainer

from tiny import TINY, tiny_args, tiny_dict
from trainhelp import toy_sample

BASE = ["--cpu", "--lr", "0.05", "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
        "--max-tokens", "4000", "--dropout", "0.0", "--seed", "3"]


def trained(arch, optim_flags, updates=4):
    d = tiny_dict()
    torch.manual_seed(0)  # the same initial deltas for both optimizers
    cfg = convert_namespace_to_omegaconf(tiny_args(arch, [*BASE, *optim_flags], dims=TINY))
    task = TranslationTask(cfg.task, d, d)
    model = task.build_model(cfg.model)
    trainer = Trainer(cfg, task, model, task.build_criterion(cfg.criterion))
    sample = toy_sample(d)
    losses = [trainer.train_step([sample])["loss"] for _ in range(updates)]
    return trainer, model, losses


def float_tensors(model):
    return {k: v for k, v in model.state_dict().items() if torch.is_tensor(v) and v.is_floating_point()}


@pytest.mark.parametrize("wd", ["0.0", "0.01"])
def test_torch_adam_matches_fairseq_adam(wd):
    """The same flags give the same training. fairseq's Adam adds eps to sqrt(v) before the bias
    correction, torch's (and the Adam paper's) after it, so the two differ where |grad| is near eps; in
    this tiny model the prefix-MLP gradients are ~1e-10, so the parity check uses eps = 1e-16."""
    arch, common = "mam_bart_base", ["--weight-decay", wd, "--adam-betas", "(0.9, 0.98)", "--adam-eps", "1e-16"]
    # one update compared entry by entry; later ones amplify rounding differences in the entries whose
    # gradient was exactly zero at the first update (LoRA-initialised W_down), so those compare losses
    _, ref, _ = trained(arch, ["--optimizer", "adam", *common], updates=1)
    trainer, got, _ = trained(arch, ["--optimizer", "torch_adam", *common], updates=1)
    opt = trainer.optimizer.optimizer
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["fused"]
    assert opt.defaults["betas"] == (0.9, 0.98) and opt.defaults["weight_decay"] == float(wd)
    assert opt.defaults["eps"] == 1e-16 and opt.param_groups[0]["lr"] == 0.05
    ref_sd, sd = float_tensors(ref), float_tensors(got)
    assert ref_sd.keys() == sd.keys() and len(sd) > 10
    # ~0.7% of the entries still differ: the encoder prefix MLP's gradients here go down to ~1e-17,
    # where eps's placement still decides Adam's first step, lr * g / (|g| + eps)
    close = torch.cat([torch.isclose(sd[k], v, atol=1e-5, rtol=1e-4).flatten() for k, v in ref_sd.items()])
    assert close.float().mean() > 0.99, f"only {close.float().mean():.5f} of the entries agree"
    assert all(torch.isfinite(v).all() for v in sd.values())
    ref_losses, losses = (trained(arch, [*o, *common], updates=6)[2] for o in (["--optimizer", "adam"],
                                                                                ["--optimizer", "torch_adam"]))
    assert losses == pytest.approx(ref_losses, rel=1e-2) and losses[-1] < losses[0]


def test_fused_and_foreach_are_the_same_update():
    """--adam-impl picks the kernel, not the math: fused and foreach give the same parameters. One torch
    thread: with two, the two runs differ by 7e-5 to 1e-4 on an adapter weight after the updates (on the code
    of 687549e as on today's), above the tolerance, with one they agree within it -- the threads' split of
    the forward/backward sums enters what the comparison measures."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runs = {impl: trained("mam_bart_base", ["--optimizer", "torch_adam", "--adam-impl", impl, "--weight-decay",
                                                "0.01"]) for impl in ("fused", "foreach")}
    finally:
        torch.set_num_threads(threads)
    assert runs["foreach"][0].optimizer.optimizer.defaults["foreach"]
    a, b = float_tensors(runs["fused"][1]), float_tensors(runs["foreach"][1])
    for k in a:
        assert torch.allclose(a[k], b[k], atol=5e-5, rtol=1e-4), (k, (a[k] - b[k]).abs().max())
    assert runs["fused"][2] == pytest.approx(runs["foreach"][2], rel=1e-5)


def test_torch_adam_bad_impl_is_named():
    with pytest.raises(Exception, match="adam-impl|adam_impl"):
        trained("lora_attn_bart_base", ["--optimizer", "torch_adam", "--adam-impl", "loop"], updates=1)
