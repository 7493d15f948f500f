"""Robustness: activation checkpointing with a frozen base, mixed precision, bad input messages."""
import pytest
import torch

from methods import IDS, METHODS
from tiny import random_batch, tiny_dict, tiny_model
from trainhelp import TRAIN_FLAGS, make_trainer, toy_sample
from unifairseq.core.config import DeltaConfigError

CKPT_METHODS = [m for m in METHODS if m[0] in ("mam", "lora_attn", "houlsby", "mhpa", "prompt", "bitfit")]


@pytest.mark.parametrize("name,arch,flags,identity", CKPT_METHODS, ids=[m[0] for m in CKPT_METHODS])
def test_checkpoint_activations_keeps_delta_gradients(name, arch, flags, identity):
    """--checkpoint-activations (fairseq's re-entrant checkpointing) and a frozen base: every delta
    still gets the gradient it gets without checkpointing."""
    grads = []
    for extra in ([], ["--checkpoint-activations"]):
        model, task, _ = tiny_model(arch, flags + extra + ["--dropout", "0", "--attention-dropout", "0"])
        model.train()
        src, lens, prev, tgt = random_batch(task.source_dictionary)
        out, _ = model(src, lens, prev)
        torch.nn.functional.cross_entropy(out.transpose(1, 2), tgt).backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    plain, ckpt = grads
    assert plain.keys() == ckpt.keys()
    for n in plain:
        assert ckpt[n] is not None, f"{name}: {n} got no gradient under activation checkpointing"
        assert torch.allclose(plain[n], ckpt[n], atol=1e-6), n


@pytest.mark.parametrize("arch,optimizer", [("mam_bart_base", "adam"), ("mam_bart_base", "torch_adam"),
                                            ("dora_attn_bart_base", "adam"), ("ia3_bart_base", "torch_adam")])
def test_bf16_on_cpu_trains_with_fp32_master_weights(arch, optimizer):
    """fairseq's --bf16 path (bf16 model, FP16Optimizer with fp32 master weights). fairseq's option
    parsing makes --bf16 imply --tpu; the test turns that off to run the same trainer on the CPU."""
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.tasks.translation import TranslationTask
    from fairseq.trainer import Trainer

    import unifairseq.fairseq.optim  # noqa: F401  (registers torch_adam, as user_dir/ does)
    from tiny import TINY, tiny_args

    d = tiny_dict()
    args = tiny_args(arch, ["--attn-bn", "4", "--ffn-bn", "8", "--mid-dim", "8", "--bf16",
                                       *TRAIN_FLAGS, "--optimizer", optimizer], dims=TINY)
    args.tpu = False
    cfg = convert_namespace_to_omegaconf(args)
    task = TranslationTask(cfg.task, d, d)
    model = task.build_model(cfg.model)
    trainer = Trainer(cfg, task, model, task.build_criterion(cfg.criterion))
    sample = toy_sample(d)
    losses = [trainer.train_step([sample])["loss"] for _ in range(6)]
    assert all(torch.isfinite(torch.tensor(l)) for l in losses), losses
    assert losses[-1] < losses[0], losses
    assert next(model.parameters()).dtype == torch.bfloat16
    # fairseq's FP16Optimizer keeps fp32 master copies of exactly the trained parameters
    masters = trainer.optimizer.fp32_params
    masters = list(masters.values()) if isinstance(masters, dict) else list(masters) \
        if isinstance(masters, (list, tuple)) else [masters]
    n_trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert sum(t.numel() for t in masters) == n_trained
    assert all(t.dtype == torch.float32 for t in masters)


@pytest.mark.parametrize("flags,message", [
    (["--attn-mode", "prefix", "--attn-bn", "0"], "--attn-bn: must be a positive"),
    (["--ffn-mode", "adapter", "--ffn-bn", "-1"], "--ffn-bn: must be a positive"),
    (["--ffn-mode", "adapter", "--ffn-adapter-scalar", "x"], "--ffn-adapter-scalar"),
    (["--attn-mode", "adapter", "--attn-option", "parallel", "--attn-composition", "gate_add"],
     "--attn-composition: gate_add"),
    (["--attn-mode", "lora", "--lora-alpha", "0"], "--lora-alpha"),
])
def test_bad_flag_values_fail_at_build_naming_the_flag(flags, message):
    with pytest.raises(DeltaConfigError, match=message):
        tiny_model("delta_bart_base", flags)


def test_unknown_method_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit):
        tiny_model("delta_bart_base", ["--attn-mode", "adaptor"])
    assert "invalid choice: 'adaptor'" in capsys.readouterr().err


def test_no_delta_at_all_is_refused():
    with pytest.raises(DeltaConfigError, match="nothing to train"):
        tiny_model("delta_bart_base", [])
