"""No code runs on load, whatever the environment: with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 (which turns
torch.load's weights-only default off), a checkpoint whose pickle would run code (it touches a marker
file) is refused in one line by every unifairseq entry point that loads one, and the marker never
appears. fairseq's own loader (its --path, --restore-file reads; unifairseq does not patch it, with or
without --user-dir) does run it: documented in docs/sharing.md, shown here."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest
import torch
from fairseq import checkpoint_utils
from fairseq.models import build_model
from fairseq.tasks.translation import TranslationTask

import unifairseq.fairseq
from env import REPO, tool_env
from tiny import tiny_args, tiny_dict, tiny_model
from unifairseq.core import bases
from unifairseq.fairseq.checkpoint_io import DeltaCheckpointError
from unifairseq.tools.export import export_inference
from unifairseq.tools.tiny_base import checkpoint_state

ARCH = "lora_attn_bart_large"
REFUSED = "could run code"


class Payload:
    """Unpickled, it touches `marker`: what a stranger's checkpoint could do instead."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.setenv("UNIFAIRSEQ_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("UNIFAIRSEQ_BASES", raising=False)
    monkeypatch.delenv("UNIFAIRSEQ_DELTA_BASE", raising=False)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    unifairseq.fairseq.register()


@pytest.fixture
def marker(tmp_path):
    m = tmp_path / "PWNED"
    yield m
    assert not m.exists(), "the payload ran"


def payload(path, marker) -> str:
    """A fairseq-shaped checkpoint ('model', 'args') with the payload beside the weights."""
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    history = [{"criterion_name": "CrossEntropyCriterion", "optimizer_name": "FairseqAdam",
                "lr_scheduler_state": {"best": None}, "num_updates": 0}]
    torch.save({"model": {"w": torch.zeros(2)}, "args": None, "optimizer_history": history,
                "last_optimizer_state": None, "extra_state": {"x": Payload(marker)}}, str(path))
    return str(path)


@pytest.fixture
def delta(tmp_path):
    """(base file, delta .pt, delta folder, task) on a tiny BART base at tmp_path/bases/tiny.bart/."""
    d = tiny_dict()
    args = tiny_args("bart_large")
    torch.manual_seed(0)
    plain = build_model(args, TranslationTask(args, d, d))
    base = tmp_path / "bases" / "tiny.bart" / "model.pt"
    os.makedirs(base.parent)
    checkpoint_utils.torch_persistent_save(checkpoint_state(plain, args), str(base))
    model, task, dargs = tiny_model(ARCH, (), d)
    model.load_base(str(base))
    pt = str(tmp_path / "delta.pt")
    checkpoint_utils.torch_persistent_save(checkpoint_state(model, dargs), pt)
    folder = str(tmp_path / "shared")
    export_inference(pt, folder)
    return str(base), pt, folder, task


def one_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_the_payload_is_real(tmp_path, marker):
    """The same file loaded the way torch's overridden default loads it runs the payload: what the
    other tests prove is refused is a real danger (and the env var is honoured)."""
    other = tmp_path / "other_marker"
    torch.load(payload(tmp_path / "p.pt", other), weights_only=False)
    assert other.exists()
    other.unlink()
    # fairseq's own loader, unpatched (registering unifairseq changes nothing in fairseq): what
    # fairseq-generate --path does with the file under this variable, --user-dir or not
    assert checkpoint_utils.load_checkpoint_to_cpu.__module__ == "fairseq.checkpoint_utils"
    checkpoint_utils.load_checkpoint_to_cpu(payload(tmp_path / "q.pt", other))
    assert other.exists(), "plain fairseq --path loading unpickles under TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1"


def test_load_checkpoint_file_refuses(tmp_path, marker):
    from unifairseq.fairseq.checkpoint_io import load_checkpoint_file

    with pytest.raises(DeltaCheckpointError, match=REFUSED) as e:
        load_checkpoint_file(payload(tmp_path / "p.pt", marker))
    assert "\n" not in str(e.value) and "beyond weights (getattr)" in str(e.value)  # the global it names


def test_unifairseq_base_add_and_list(tmp_path, marker, capsys):
    from unifairseq.tools import base as tool

    p = payload(tmp_path / "p.pt", marker)
    assert tool.main(["add", p, "--name", "evil"]) == 2
    assert REFUSED in one_line(capsys.readouterr().err)
    assert not os.path.exists(tmp_path / "cache" / "bases" / "evil")
    payload(tmp_path / "cache" / "bases" / "evil" / "model.pt", marker)
    assert tool.main(["list"]) == 0
    assert "(unreadable)" in capsys.readouterr().out


def test_unifairseq_base_find_on_a_strangers_folder(tmp_path, delta, marker, capsys, caplog):
    """The delta's base is gone; the cache holds a payload under the delta's own name and another: the
    scan reads both weights-only, refuses them, and find fails with nothing on stdout."""
    from unifairseq.tools import base as tool

    base, pt, folder, task = delta
    os.remove(base)
    payload(tmp_path / "cache" / "bases" / "tiny.bart" / "model.pt", marker)
    payload(tmp_path / "cache" / "bases" / "zzz" / "model.pt", marker)
    assert tool.main(["find", folder]) == 2
    out = capsys.readouterr()
    assert out.out == "" and "base 'tiny.bart' not found" in one_line(out.err)
    assert sum(REFUSED in r.getMessage() for r in caplog.records) == 2


@pytest.mark.parametrize("cmd", ["inference", "merge", "unmerge_merged", "unmerge_delta", "merge_base", "hf",
                                 "hf_base"])
def test_unifairseq_export(tmp_path, delta, marker, capsys, cmd):
    from unifairseq.tools.export_cli import main

    base, pt, folder, task = delta
    p = payload(tmp_path / "p.pt", marker)
    out = str(tmp_path / "out.pt")
    if cmd.startswith("hf"):
        pytest.importorskip("transformers")
    argv = {"inference": ["inference", p, out], "merge": ["merge", p, out], "unmerge_merged": ["unmerge", p, pt, out],
            "unmerge_delta": ["unmerge", base, p, out], "merge_base": ["merge", pt, out, "--base", p],
            "hf": ["hf", p, str(tmp_path / "hf")], "hf_base": ["hf", pt, str(tmp_path / "hf"), "--base", p]}[cmd]
    assert main(argv) == 2
    assert REFUSED in one_line(capsys.readouterr().err)
    assert not os.path.exists(out) and not os.path.exists(tmp_path / "hf")


def test_unifairseq_bank(tmp_path, delta, marker, capsys):
    from unifairseq.tools.bank_cli import main

    base, pt, folder, task = delta
    p = payload(tmp_path / "p.pt", marker)
    (tmp_path / "data").mkdir()
    assert main(["build", str(tmp_path / "bank.pt"), f"a={pt}", "--base", p, "--data", str(tmp_path / "data")]) == 2
    assert REFUSED in one_line(capsys.readouterr().err)
    assert main(["extract", p, "a", str(tmp_path / "one.pt")]) == 2
    assert REFUSED in one_line(capsys.readouterr().err)


def test_delta_pt_whose_recorded_base_is_a_payload(tmp_path, delta, marker):
    """fairseq-generate --path delta.pt: our code loads the recorded base, weights-only."""
    base, pt, folder, task = delta
    os.remove(base)
    payload(base, marker)
    with pytest.raises(DeltaCheckpointError, match=REFUSED):
        checkpoint_utils.load_model_ensemble([pt], task=task)


def test_the_hub_and_the_entry_file(tmp_path, delta, marker):
    """The hub reads its base weights-only first when the variable is set (fairseq is not patched); the
    entry file DIR/model.pt and the hub's delta= whose base (by name) is a payload are refused too."""
    from unifairseq.fairseq.models.bart import DeltaBARTModel

    base, pt, folder, task = delta
    os.remove(base)
    payload(base, marker)
    with pytest.raises(DeltaCheckpointError, match=REFUSED):
        checkpoint_utils.load_model_ensemble([os.path.join(folder, "model.pt")], task=task)
    with pytest.raises(DeltaCheckpointError, match=REFUSED):
        DeltaBARTModel.from_pretrained(os.path.dirname(base), "model.pt", data_name_or_path=str(tmp_path))
    with pytest.raises(DeltaCheckpointError, match=REFUSED):
        DeltaBARTModel.from_pretrained(None, delta=folder, data_name_or_path=str(tmp_path))
    assert bases.cache_dir() == str(tmp_path / "cache")


def test_a_strangers_entry_file_is_refused_by_find(tmp_path, delta, marker, capsys):
    """A stranger's folder whose model.pt would run code (its sha256 duly recorded): `unifairseq-base find
    DIR` reads it weights-only and refuses it in one line; the hub never opens it."""
    import hashlib

    from unifairseq.tools import base as tool

    base, pt, folder, task = delta
    entry = os.path.join(folder, "model.pt")
    payload(entry, marker)
    from deltahelp import resign

    resign(folder, lambda cfg: cfg["entry"].update(sha256=hashlib.sha256(open(entry, "rb").read()).hexdigest(),
                                                   bytes=os.path.getsize(entry)))
    assert tool.main(["find", folder]) == 2
    out = capsys.readouterr()
    assert out.out == "" and REFUSED in one_line(out.err) and entry in out.err
    from unifairseq.fairseq.deltafolder import hub_arguments

    assert hub_arguments(None, "model.pt", ".", folder, {})[0] == os.path.dirname(base)  # the base, not model.pt


def test_fairseq_generate_with_user_dir(tmp_path, delta, marker):
    """The command line: `fairseq-generate --user-dir ... --path DIR/model.pt` whose base is a payload ends
    in one unifairseq line and nothing runs. A payload given as --path itself is fairseq's own read,
    unpatched: under the variable it runs (the honest limit, docs/sharing.md "Nothing runs on load")."""
    base, pt, folder, task = delta
    data = tmp_path / "data-bin"
    data.mkdir()
    for lang in ("en", "ro"):
        task.source_dictionary.save(str(data / f"dict.{lang}.txt"))
    os.remove(base)
    payload(base, marker)
    env = tool_env(PYTHONPATH=str(REPO), TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1",
                   UNIFAIRSEQ_CACHE=str(tmp_path / "cache"), HOME=str(tmp_path / "home"))
    other = tmp_path / "fairseqs_own_read"

    def generate(path):
        return subprocess.run([sys.executable, "-m", "fairseq_cli.generate", str(data), "--user-dir",
                               str(REPO / "user_dir"), "--task", "translation", "--source-lang", "en", "--target-lang",
                               "ro", "--path", path, "--cpu", "--batch-size", "1"], capture_output=True, text=True,
                              cwd=tmp_path, env=env, timeout=300)

    p = generate(os.path.join(folder, "model.pt"))
    err = [ln for ln in p.stderr.splitlines() if ln.startswith("unifairseq: error:")]
    assert p.returncode != 0 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert len(err) == 1 and REFUSED in err[0], p.stderr[-2000:]
    p = generate(payload(tmp_path / "p.pt", other))
    assert p.returncode != 0 and other.exists(), "fairseq's own --path read unpickles under the variable"
