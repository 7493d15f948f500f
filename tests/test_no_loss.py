"""No sentence lost to `--required-batch-size-multiple` (fairseq 0.12.3 drops a split's last batch
when its size is not a multiple of it; unifairseq/fairseq/batching.py): fairseq's own command lines,
as the project documents and prints them, on a tiny BART and a synthetic copy task whose splits
(44 / 12 / 20 sentences) are not multiples of 8. Sentences are counted: H lines of fairseq-generate
and fairseq-interactive, the per-update batch sizes of fairseq-train's json log."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from datahelp import write_copy_task
from env import BIN, REPO, tool_env

PY = sys.executable
DIMS = ["--encoder-layers", "2", "--decoder-layers", "2", "--encoder-embed-dim", "32", "--decoder-embed-dim", "32",
        "--encoder-ffn-embed-dim", "64", "--decoder-ffn-embed-dim", "64", "--encoder-attention-heads", "4",
        "--decoder-attention-heads", "4", "--share-all-embeddings"]
SIZES = {"train": 44, "valid": 12, "test": 20}
DECODE = ["--max-len-b", "5", "--num-workers", "0"]  # short hypotheses: the count is what is tested
NOTICE = ("unifairseq: --required-batch-size-multiple 8 set to 1: fairseq 0.12.3 drops a split's last batch when "
          "its size is not a multiple of 8 (facebookresearch/fairseq#5036), losing up to 7 sentences of every split")


def run(cmd, env=None, **kw):
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=REPO, timeout=300,
                       env=env or tool_env(PYTHONPATH=str(REPO)), **kw)
    assert p.returncode == 0, f"{cmd[:3]} failed:\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
    return p


def h_lines(text: str) -> int:
    return sum(1 for line in text.splitlines() if line.startswith("H-"))


def train_stats(log: str):
    """(batch sizes of epoch 1's updates, the epoch-1 validation record) from a --log-format json log."""
    bsz, valid = [], None
    for kind, record in re.findall(r"\| (train_inner|valid) \| (\{.*\})", log):
        r = json.loads(record)
        if kind == "train_inner" and int(r["epoch"]) == 1:
            bsz.append(float(r["bsz"]))
        elif kind == "valid" and int(r["epoch"]) == 1:
            valid = r
    return bsz, valid


def train(data, base, save, *extra):
    """fairseq-train as the README writes it (no --required-batch-size-multiple): one epoch, batch 8."""
    p = run([PY, "-m", "fairseq_cli.train", data, "--user-dir", REPO / "user_dir", "--task", "translation",
             "--arch", "lora_attn_bart_base", *DIMS, "--attn-bn", "4", "--finetune-from-model", base,
             "--optimizer", "adam", "--lr", "0.01", "--max-epoch", "1", "--batch-size", "8", "--batch-size-valid", "16",
             "--dropout", "0.0", "--no-epoch-checkpoints", "--save-dir", save, "--cpu", "--num-workers", "0",
             "--seed", "1", "--log-format", "json", "--log-interval", "1", *extra])
    return p.stdout + p.stderr


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Synthetic copy-task data, a tiny random base, one LoRA delta trained with fairseq's defaults."""
    root = tmp_path_factory.mktemp("noloss")
    raw = root / "raw"
    raw.mkdir()
    write_copy_task(raw, SIZES)
    data = root / "data-bin"
    run([PY, "-m", "fairseq_cli.preprocess", "--source-lang", "src", "--target-lang", "tgt", "--trainpref",
         raw / "train", "--validpref", raw / "valid", "--testpref", raw / "test", "--destdir", data,
         "--joined-dictionary", "--workers", "1"])
    base = root / "base" / "model.pt"
    run([PY, "-m", "unifairseq.tools.make_tiny_bart", data, base, "--layers", "2", "--dim", "32",
         "--ffn-dim", "64", "--heads", "4", "--seed", "0"])
    log = train(data, base, root / "ckpt")
    return root, data, base, root / "ckpt" / "checkpoint_last.pt", log, raw


@pytest.mark.slow
def test_train_epoch_sees_every_example_with_fairseq_defaults(trained):
    *_, log, _raw = trained
    bsz, valid = train_stats(log)
    assert sum(bsz) == SIZES["train"] and len(bsz) == 6, bsz  # 5 batches of 8 and the last one of 4
    assert valid is not None and float(valid["valid_bsz"]) == SIZES["valid"], valid  # one validation batch of 12
    assert "set to 1" not in log  # the delta architecture's default is 1: nothing to correct


@pytest.mark.slow
def test_explicit_multiple_in_training_is_set_to_1_with_a_notice(trained, tmp_path):
    root, data, base, *_ = trained
    log = train(data, base, tmp_path / "ckpt", "--required-batch-size-multiple", "8")
    assert log.count(NOTICE) == 1, log[-3000:]
    bsz, valid = train_stats(log)
    assert sum(bsz) == SIZES["train"] and float(valid["valid_bsz"]) == SIZES["valid"], (bsz, valid)


@pytest.mark.slow
def test_generate_documented_command_decodes_every_sentence(trained):
    root, data, base, ckpt, *_ = trained
    # control, and the case nothing of ours can reach: the plain base (fairseq's own bart, no unifairseq model or
    # task built; --user-dir only for torch's allow-list) with fairseq's default multiple of 8 loses 4 sentences
    plain = run([PY, "-m", "fairseq_cli.generate", data, "--user-dir", REPO / "user_dir", "--path", base, "--beam", "6",
                 "--batch-size", "8", *DECODE])
    assert h_lines(plain.stdout) == 16 and NOTICE not in plain.stderr
    # README: fairseq-generate DATA --user-dir user_dir --path checkpoints/checkpoint_best.pt --beam 6 \
    #     --required-batch-size-multiple 1; and without the flag (fairseq-generate's default 8, set to 1 by the
    #     delta model's build, with the notice), in one batch and in batches of 8
    for extra, notices in ((["--required-batch-size-multiple", "1"], 0), ([], 1), (["--batch-size", "8"], 1)):
        p = run([PY, "-m", "fairseq_cli.generate", data, "--user-dir", REPO / "user_dir", "--path", ckpt,
                 "--beam", "6", *extra, *DECODE])
        assert h_lines(p.stdout) == SIZES["test"], (extra, p.stdout[-1500:])
        assert p.stderr.count(NOTICE) == notices, (extra, p.stderr[-1500:])


@pytest.mark.slow
def test_interactive_with_defaults_answers_every_line(trained):
    root, data, base, ckpt, _log, raw = trained
    lines = (raw / "test.src").read_text(encoding="utf-8")
    p = run([PY, "-m", "fairseq_cli.interactive", data, "--user-dir", REPO / "user_dir", "--path", ckpt,
             "--beam", "6", "--buffer-size", "8", "--batch-size", "8", *DECODE], input=lines)
    assert h_lines(p.stdout) == SIZES["test"] == len(lines.splitlines())


@pytest.mark.slow
def test_command_printed_by_export_decodes_every_sentence(trained, tmp_path):
    root, data, base, ckpt, *_ = trained
    folder = tmp_path / "my_delta"
    env = tool_env(PYTHONPATH=str(REPO), HOME=str(tmp_path / "home"), XDG_CACHE_HOME=str(tmp_path / "cache"),
                   UNIFAIRSEQ_BASES=str(tmp_path / "bases"), PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("UNIFAIRSEQ_CACHE", None)
    printed = run([PY, "-m", "unifairseq.tools.export_cli", "inference", ckpt, folder], env=env).stdout
    lines = printed.splitlines()
    start = next(i for i, l in enumerate(lines) if l.strip().startswith("fairseq-generate"))
    command = (lines[start].strip().rstrip("\\") + " " + lines[start + 1].strip()).replace("DATA-BIN", shlex.quote(str(data)))
    assert "--required-batch-size-multiple 1" in command
    p = run(["bash", "-c", f"{command} --beam 6 {' '.join(DECODE)}"], env=env)
    assert h_lines(p.stdout) == SIZES["test"] and NOTICE not in p.stderr
    # the same command without the flag: the delta model's build sets fairseq-generate's 8 to 1, saying so
    bare = command.replace(" --required-batch-size-multiple 1", "")
    p = run(["bash", "-c", f"{bare} --beam 6 --batch-size 8 {' '.join(DECODE)}"], env=env)
    assert h_lines(p.stdout) == SIZES["test"] and p.stderr.count(NOTICE) == 1


def _parsed(parser_fn, argv):
    from fairseq import options

    import unifairseq.fairseq

    unifairseq.fairseq.register()
    return options.parse_args_and_arch(parser_fn(), argv)


@pytest.mark.parametrize("argv,expected", [
    (["DATA", "--arch", "lora_attn_bart_base"], 1),       # a delta architecture: default 1
    (["DATA", "--arch", "bank_bart_base"], 1),
    (["DATA", "--arch", "pfeiffer_roberta_base", "--task", "sentence_prediction"], 1),
    (["DATA", "--arch", "bart_base"], 8),                 # fairseq's own architecture: fairseq's default
    (["DATA", "--arch", "bart_base", "--task", "translation_rouge"], 1),  # our task: default 1
    (["DATA", "--arch", "lora_attn_bart_base", "--required-batch-size-multiple", "4"], 4),  # explicit wins
])
def test_parse_time_default(argv, expected):
    from fairseq import options

    assert _parsed(options.get_training_parser, argv).required_batch_size_multiple == expected


def test_generation_parser_with_our_tasks_defaults_to_1():
    from fairseq import options

    for task, extra in (("translation_rouge", []), ("translation_mbart", ["--langs", "en_XX,ro_RO"]),
                        ("delta_bank", []), ("translation", [])):
        got = _parsed(options.get_generation_parser, ["DATA", "--task", task, *extra]).required_batch_size_multiple
        assert got == (8 if task == "translation" else 1), task


def test_build_time_correction_of_the_run_config(caplog):
    """What the delta model's build and our tasks do with the task they are given: the run's config node that
    fairseq keeps the task config under is set to 1 (one notice); a legacy task's Namespace is a copy that
    fairseq's Trainer does not read, so it only gets the notice with the fix."""
    import logging
    from argparse import Namespace

    from omegaconf import OmegaConf

    from unifairseq.fairseq.batching import no_dropped_batches

    root = OmegaConf.create({"dataset": {"required_batch_size_multiple": 8}, "task": {"_name": "translation"}})
    OmegaConf.set_struct(root, True)  # as fairseq's convert_namespace_to_omegaconf leaves it
    with caplog.at_level(logging.WARNING):
        no_dropped_batches(Namespace(cfg=root.task))
        no_dropped_batches(Namespace(cfg=root.task))  # already 1: nothing more to say
    assert root.dataset.required_batch_size_multiple == 1
    assert [r.getMessage() for r in caplog.records] == [NOTICE]
    caplog.clear()
    legacy = Namespace(required_batch_size_multiple=4)
    with caplog.at_level(logging.WARNING):
        no_dropped_batches(Namespace(cfg=legacy))
    assert legacy.required_batch_size_multiple == 4
    assert [r.getMessage() for r in caplog.records] == [
        "unifairseq: --required-batch-size-multiple 4: fairseq 0.12.3 drops a split's last batch when its size is "
        "not a multiple of 4 (facebookresearch/fairseq#5036), losing up to 3 sentences of every split; pass "
        "--required-batch-size-multiple 1 to keep every sentence"]
