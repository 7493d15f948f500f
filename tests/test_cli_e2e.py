"""End to end through fairseq's own command lines, on real WMT16 en-ro sentences:

    fairseq-preprocess --joined-dictionary
    python -m unifairseq.tools.make_tiny_bart     (plain BART checkpoint, official layout)
    fairseq-train --user-dir user_dir --arch mam_bart_base --restore-file tiny_bart.pt ...
    fairseq-generate --user-dir user_dir --path checkpoint_last.pt ...

all run by `scripts/demo_tiny_bart.sh --quick --save-full` in a temporary work dir (~30 s on
2 CPU cores). The data is read in place from $UNIFAIRSEQ_DATA (default <repo>/../shared/data);
the end-to-end tests are skipped only when that data is missing.
"""
from __future__ import annotations

import json
import os
import pickle
import subprocess
from pathlib import Path

import pytest
import torch

import unifairseq.fairseq

unifairseq.fairseq.register()  # as --user-dir user_dir does: models, tasks, torch.load allow-list
from unifairseq.core.modules import is_delta_name

try:  # delta checkpoints carry two metadata entries besides tensors of the model
    from unifairseq.fairseq.checkpoint_io import META_KEYS
except ImportError:  # pragma: no cover
    META_KEYS = ()

from env import DATA, REPO, missing, require_data, tool_env

pytestmark = pytest.mark.slow
SCRIPT = REPO / "scripts" / "demo_tiny_bart.sh"
ENRO_DEV = ("wmt16_en_ro/dev.en", "wmt16_en_ro/dev.ro")
HAVE_DATA = not missing(*ENRO_DEV)
needs_data = pytest.mark.skipif(
    not HAVE_DATA and not os.environ.get("CI"), reason=f"WMT16 en-ro data not found at {DATA}/wmt16_en_ro/dev.{{en,ro}}; "
    "set UNIFAIRSEQ_DATA to the directory holding wmt16_en_ro/")

QUICK_UPDATES = 30  # what --quick sets
QUICK_TEST_LINES = 16


_env = tool_env


def torch_load(path: Path) -> dict:
    """Plain torch.load (weights_only=True by default on torch >= 2.6): the globals a fairseq
    checkpoint needs are allow-listed by importing unifairseq; name the one that is not."""
    try:
        return torch.load(path)
    except pickle.UnpicklingError as e:
        pytest.fail(f"torch.load({path.name}) refused a global that unifairseq does not allow-list: {e}")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    require_data(*ENRO_DEV)
    work = tmp_path_factory.mktemp("demo_tiny_bart")
    proc = subprocess.run(["bash", str(SCRIPT), "--quick", "--save-full", "--workdir", str(work)],
                          cwd=REPO, env=_env(UNIFAIRSEQ_DATA=str(DATA)), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"demo script failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return work, proc.stdout


def train_losses(log: Path):
    rows = []
    for line in log.read_text(encoding="utf-8").splitlines():
        if "| train_inner |" in line:
            rows.append(json.loads(line.split("| train_inner |", 1)[1]))
    return rows


# ------------------------------------------------------------------ e2e
@needs_data
def test_preprocess_outputs(run):
    work, _ = run
    bin_dir = work / "data-bin"
    for lang in ("en", "ro"):
        assert (bin_dir / f"dict.{lang}.txt").is_file()
        for split in ("train", "valid", "test"):
            for ext in ("bin", "idx"):
                assert (bin_dir / f"{split}.en-ro.{lang}.{ext}").stat().st_size > 0
    # joined dictionary, capped vocabulary
    en, ro = (bin_dir / "dict.en.txt").read_text(), (bin_dir / "dict.ro.txt").read_text()
    assert en == ro
    assert 100 < len(en.splitlines()) <= 3000
    assert len((work / "raw" / "test.en").read_text(encoding="utf-8").splitlines()) == QUICK_TEST_LINES


@needs_data
def test_training_loss_decreases(run):
    work, stdout = run
    rows = train_losses(work / "train.log")
    assert [int(r["num_updates"]) for r in rows] == list(range(1, QUICK_UPDATES + 1))
    losses = [float(r["loss"]) for r in rows]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first, f"loss did not go down: first 5 {losses[:5]}, last 5 {losses[-5:]}"
    assert "OK: the training loss went down" in stdout


def initial_model(work: Path):
    """The model fairseq-train started from: rebuilt from the run's own argv and seed, exactly as
    fairseq_cli.train does (seed, task, build_model) before it restores tiny_bart.pt."""
    import numpy as np
    from fairseq import options, tasks, utils
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    argv = json.loads((work / "train_args.json").read_text())
    args = options.parse_args_and_arch(options.get_training_parser(), argv)
    cfg = convert_namespace_to_omegaconf(args)
    np.random.seed(cfg.common.seed)
    utils.set_torch_seed(cfg.common.seed)
    task = tasks.setup_task(cfg.task)
    return task.build_model(cfg.model)


@needs_data
def test_checkpoint_base_untouched_deltas_trained(run):
    work, _ = run
    base = torch_load(work / "tiny_bart.pt")
    trained = torch_load(work / "checkpoints" / "checkpoint_last.pt")
    assert set(base) == {"args", "model", "optimizer_history", "extra_state", "last_optimizer_state"}
    assert base["args"].arch == "bart_base"
    assert not any(is_delta_name(k) for k in base["model"]), "the tiny base must be a plain BART"

    sd = trained["model"]
    base_names = [k for k in sd if not is_delta_name(k) and k not in META_KEYS]
    # --save-full: every base tensor is in the checkpoint, and bitwise the tiny base's
    assert sorted(base_names) == sorted(base["model"]), "checkpoint_last.pt lacks (or adds) base tensors"
    changed = [k for k in base_names if not torch.equal(sd[k], base["model"][k])]
    assert not changed, f"frozen base tensors changed in training: {changed[:5]}"

    init = initial_model(work)
    trainable = {n: p.detach() for n, p in init.named_parameters() if p.requires_grad}
    assert trainable and all(is_delta_name(n) for n in trainable)
    assert {k for k in sd if is_delta_name(k)} >= set(trainable)
    same = [n for n, p in trainable.items() if torch.equal(sd[n], p)]
    assert not same, f"delta parameters still at their initialisation after training: {same}"
    # the W_up of the LoRA-initialised adapters start at zero; training moved them
    zero_init = [n for n, p in trainable.items() if not p.any()]
    assert zero_init and all(sd[n].any() for n in zero_init)


@needs_data
def test_generate_output(run):
    work, stdout = run
    lines = (work / "generate.out").read_text(encoding="utf-8").splitlines()
    ids = {tag: sorted(int(l.split("\t")[0][2:]) for l in lines if l.startswith(tag + "-"))
           for tag in ("S", "T", "H")}
    for tag in ("S", "T", "H"):
        assert ids[tag] == list(range(QUICK_TEST_LINES)), f"{tag}- lines: {ids[tag]}"
    assert any(l.startswith("Generate test with beam=4") for l in lines)
    assert "test hypotheses" in stdout and "H-" in stdout


# ------------------------------------------------- errors (no data needed)
def test_script_help_and_missing_data(tmp_path):
    help_ = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True, env=_env())
    assert help_.returncode == 0 and "UNIFAIRSEQ_DATA" in help_.stdout and "--quick" in help_.stdout
    missing = tmp_path / "nowhere"
    proc = subprocess.run(["bash", str(SCRIPT), "--quick", "--workdir", str(tmp_path / "w")], capture_output=True,
                          text=True, env=_env(UNIFAIRSEQ_DATA=str(missing)))
    assert proc.returncode == 2
    assert f"{missing}/wmt16_en_ro/dev.en" in proc.stderr and "Point UNIFAIRSEQ_DATA" in proc.stderr


def test_make_tiny_bart_missing_dictionary(tmp_path, capsys):
    from unifairseq.tools.make_tiny_bart import main

    assert main([str(tmp_path), str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err
    assert "dict.<lang>.txt" in err and "fairseq-preprocess" in err
    assert main([str(tmp_path / "absent"), str(tmp_path / "x.pt")]) == 2
    assert "not a directory" in capsys.readouterr().err
    (tmp_path / "dict.en.txt").write_text("hello 1\n")
    assert main([str(tmp_path), str(tmp_path / "x.pt"), "--source-lang", "en", "--target-lang", "ro",
                 "--dim", "30"]) == 2
    assert "not divisible" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()
