"""Multi-task training of a delta bank with `--task delta_bank --bank-tasks NAME:DATA,...`: batches mix
the tasks, one step updates every delta, each only from its own examples; the base never changes."""
from __future__ import annotations

import pytest
import torch
from fairseq import options
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.trainer import Trainer

import unifairseq.fairseq

unifairseq.fairseq.register()
from unifairseq.fairseq.checkpoint_io import META_KEYS, load_checkpoint_file
from unifairseq.fairseq.tasks.bank import BankTaskError

from bankdata import BIN, DIMS, REPO, binarize, make_base, make_dict, run, write_raw

BANK = "sum=lora_attn:attn_bn=4:lora_dropout=0,mt=pfeiffer:ffn_bn=8"  # no dropout: exact gradients
BANK_FLAGS = ["--arch", "bank_bart_large", "--bank-deltas", BANK]


@pytest.fixture(scope="module")
def two_tasks(tmp_path_factory):
    """Two tasks over one dictionary: 'sum' reverses the source, 'mt' reverses and shifts every word."""
    w = tmp_path_factory.mktemp("bank_tasks")
    dic = make_dict(w / "dict.txt")
    write_raw(w / "raw_sum", 0, {"train": 24, "valid": 6})
    write_raw(w / "raw_mt", 1, {"train": 16, "valid": 6}, shift=7)
    sum_bin = binarize(w / "raw_sum", w / "sum-bin", dic, ("train", "valid"))
    mt_bin = binarize(w / "raw_mt", w / "mt-bin", dic, ("train", "valid"))
    return w, sum_bin, mt_bin


def delta_params(model, name):
    return {n: p for n, p in model.named_parameters() if n.startswith(f"delta_bank.{name}.")}


def make_trainer(sum_bin, mt_bin):
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [
        str(sum_bin), "--task", "delta_bank", "--bank-tasks", f"sum:{sum_bin},mt:{mt_bin}", "--source-lang", "src",
        "--target-lang", "tgt", *BANK_FLAGS, *DIMS, "--cpu", "--optimizer", "adam", "--lr", "0.01",
        "--criterion", "cross_entropy", "--dropout", "0", "--clip-norm", "0", "--seed", "3", "--max-tokens", "4000"])
    cfg = convert_namespace_to_omegaconf(args)
    from fairseq import tasks

    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    task.load_dataset("train")
    return Trainer(cfg, task, model, task.build_criterion(cfg.criterion)), task, model


def test_each_delta_gradient_comes_only_from_its_own_examples(two_tasks):
    """One mixed batch through fairseq's Trainer (cross entropy summed over tokens, the gradient divided by
    the batch's sample size as fairseq does): each delta's gradient x sample size equals that of a batch of
    its own examples alone x its sample size; the other delta gets none; base weights stay bitwise equal."""
    _, sum_bin, mt_bin = two_tasks
    trainer, task, model = make_trainer(sum_bin, mt_bin)
    ds = task.datasets["train"]
    names = {i: ("sum" if i < 24 else "mt") for i in range(len(ds))}
    picked = [0, 25, 3, 30, 7, 26, 11]  # both tasks, interleaved
    mixed = ds.collater([ds[i] for i in picked])
    assert mixed["net_input"]["delta_ids"].tolist() == [model.bank.index(names[i]) for i in mixed["id"].tolist()]
    full = lambda: torch.nn.Module.state_dict(model)  # the bank model's own state_dict() is the bank only
    base = {k: v.clone() for k, v in full().items() if not k.startswith("delta_bank.")}

    def grads_after(sample):
        log = trainer.train_step([sample])
        return {n: (p.grad.clone() if p.grad is not None else None) for n, p in model.named_parameters()
                if p.requires_grad}, log["sample_size"]

    state0 = {k: v.clone() for k, v in full().items()}
    g_mixed, ss_mixed = grads_after(mixed)
    for name in ("sum", "mt"):
        torch.nn.Module.load_state_dict(model, state0)  # the same weights for every gradient
        trainer.optimizer.zero_grad()
        own = ds.collater([ds[i] for i in picked if names[i] == name])
        g_own, ss_own = grads_after(own)
        other = "mt" if name == "sum" else "sum"
        for n in delta_params(model, name):
            torch.testing.assert_close(g_mixed[n] * ss_mixed, g_own[n] * ss_own, rtol=1e-5, atol=1e-7, msg=n)
        moved = [n for n in delta_params(model, name) if g_own[n] is not None and g_own[n].abs().sum() > 0]
        assert moved, f"{name}: no gradient at all"
        for n in delta_params(model, other):  # no example of the other task: its delta gets nothing
            assert g_own[n] is None or not g_own[n].any(), n
    after = full()
    assert len(base) > 50
    for k, v in base.items():
        assert torch.equal(after[k], v), f"base {k} changed"
    assert {n for n, p in model.named_parameters() if p.requires_grad} == \
        set(delta_params(model, "sum")) | set(delta_params(model, "mt"))


def test_bank_tasks_must_share_the_dictionary(two_tasks, tmp_path):
    """A task binarized with another dictionary is refused when its data loads, naming the file and the fix."""
    import shutil

    from fairseq import tasks

    _, sum_bin, _ = two_tasks
    shutil.copytree(sum_bin, tmp_path / "other")
    (tmp_path / "other" / "dict.src.txt").write_text("".join(f"v{i} 1\n" for i in range(40)))
    args = options.parse_args_and_arch(options.get_training_parser(), [
        str(sum_bin), "--task", "delta_bank", "--bank-tasks", f"sum:{sum_bin},mt:{tmp_path / 'other'}",
        "--source-lang", "src", "--target-lang", "tgt", *BANK_FLAGS, *DIMS, "--cpu"])
    task = tasks.setup_task(convert_namespace_to_omegaconf(args).task)
    with pytest.raises(BankTaskError, match=r"other/dict.src.txt differs from the dictionary of .*--srcdict/--tgtdict"):
        task.load_dataset("train")


@pytest.mark.slow
def test_fairseq_train_multi_task_bank(two_tasks):
    """fairseq-train --task delta_bank --bank-tasks sum:..,mt:.. --arch bank_bart_large, 4 updates: both deltas
    move between update 2 and update 4; the checkpoint holds the two deltas and the base's path, and loaded
    as fairseq-generate loads it, its base equals the base file bitwise."""
    from fairseq import checkpoint_utils, tasks

    w, sum_bin, mt_bin = two_tasks
    base = make_base(sum_bin, w / "base.pt")
    save = w / "ckpt"
    argv = [sum_bin, "--task", "delta_bank", "--bank-tasks", f"sum:{sum_bin},mt:{mt_bin}", "--source-lang", "src",
            "--target-lang", "tgt", *BANK_FLAGS, *DIMS]
    p = run([BIN / "fairseq-train", *argv, "--user-dir", REPO / "user_dir", "--finetune-from-model", base,
             "--criterion", "cross_entropy", "--optimizer", "adam", "--lr", "0.01", "--dropout", "0", "--max-update",
             "4", "--save-interval-updates", "2", "--batch-size", "8", "--required-batch-size-multiple", "1",
             "--no-epoch-checkpoints", "--save-dir", save, "--cpu", "--num-workers", "0", "--seed", "1",
             "--log-format", "json", "--no-progress-bar"])
    assert "train of task 'sum': 24 examples" in p.stdout + p.stderr
    assert "train of task 'mt': 16 examples" in p.stdout + p.stderr
    at = {u: {k: v for k, v in load_checkpoint_file(str(save / f"checkpoint_1_{u}.pt"))["model"].items()
              if k not in META_KEYS} for u in (2, 4)}
    state = at[4]
    for name in ("sum", "mt"):
        keys = [k for k in state if k.startswith(f"delta_bank.{name}.")]
        assert keys, f"no tensor of delta {name} in the checkpoint"
        assert any(not torch.equal(at[2][k], state[k]) for k in keys), f"delta {name} did not move"
    assert all(k.startswith("delta_bank.") for k in state), "the bank checkpoint holds a base tensor"
    args = options.parse_args_and_arch(options.get_training_parser(), [str(a) for a in argv] + ["--cpu"])
    task = tasks.setup_task(args)
    (model,), _ = checkpoint_utils.load_model_ensemble([str(save / "checkpoint_last.pt")], task=task)
    own = torch.nn.Module.state_dict(model)
    for k, v in load_checkpoint_file(str(base))["model"].items():
        assert torch.equal(own[k], v), f"base {k} differs from {base.name}"
    for k, v in state.items():
        assert torch.equal(own[k], v), k
    # each trained delta alone: its single-delta tensors, loaded onto a bank of the same base by the bank API
    from unifairseq.fairseq.bank import load_bank

    for name in ("sum", "mt"):
        alone = load_bank(str(base), {name: {"cfg": model.bank.delta_config(name),
                                             "model": model.bank.delta_state(name)}}, task=task)
        assert alone.bank.names == [name]
        for k, v in alone.bank.delta_state(name).items():
            assert torch.equal(v, state[f"delta_bank.{name}.{k}"]), k
