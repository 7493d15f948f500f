"""The SST-2 demo (`python -m unifairseq.demo`, `scripts/demo.sh`), reduced with --quick: the packaged
all-MiniLM-L6-v2 imported, 256 real SST-2 training examples, full fine-tuning and MAM for 24
updates each, then the whole dev set evaluated; the table, results.json and the PNG must be there,
and both methods must beat the dev majority class (counted here from dev.tsv). The quick run gets a
budget far too small: it must warn, and still train every update. About a minute on 2 idle CPU
cores. The run is skipped only when SST-2 is missing; the missing-data message is tested without data.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from env import DATA, REPO, require_data, tool_env

pytestmark = pytest.mark.slow
SCRIPT = REPO / "scripts" / "demo.sh"
SST2 = DATA / "glue" / "SST-2"
_env = tool_env


def dev_labels() -> list:
    """The label column of dev.tsv, read here with plain string operations (not the demo's reader)."""
    with open(SST2 / "dev.tsv", encoding="utf-8") as f:
        lines = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    assert lines[0][:2] == ["sentence", "label"]
    return [row[1] for row in lines[1:]]


def dev_size() -> int:
    return len(dev_labels())


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    require_data("glue/SST-2/train.tsv", "glue/SST-2/dev.tsv")
    work = tmp_path_factory.mktemp("demo")
    # a budget of 3 seconds: warnings only, every run still trains all its updates
    proc = subprocess.run(["bash", str(SCRIPT), "--quick", "--workdir", str(work), "--budget-minutes", "0.05"], cwd=REPO,
                          env=_env(UNIFAIRSEQ_DATA=str(DATA)), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"demo --quick failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return work, proc.stdout


def test_quick_demo_outputs(quick):
    work, stdout = quick
    res = json.loads((work / "results.json").read_text(encoding="utf-8"))
    n_dev = dev_size()
    assert res["quick"] is True and res["n_dev"] == n_dev == 872 and res["n_train"] == 256
    names = [m["name"] for m in res["methods"]]
    assert names == ["full", "mam"]
    for m in res["methods"]:
        acc = m["dev_accuracy"]
        assert isinstance(acc, float) and 0.0 <= acc <= 1.0
        assert m["dev_total"] == n_dev, "the dev set must never be subsampled"
        assert m["dev_correct"] == round(acc * n_dev)
        assert m["updates"] == m["planned_updates"] == 24, "the budget must never cut a run short"
        assert "--stop-time-hours" not in m["command"] and "--max-update 24 " in m["command"]
        assert m["trainable"] > 0 and m["checkpoint_bytes"] == os.path.getsize(m["checkpoint"])
        assert m["inference_bytes"] > 0 and Path(m["inference_file"]).is_file()
    # above the majority class of the dev set, counted here from dev.tsv (444 of 872 on GLUE SST-2)
    labels = dev_labels()
    majority = max(labels.count(c) for c in set(labels))
    assert res["dev_majority"] == pytest.approx(majority / n_dev)
    for m in res["methods"]:
        assert m["dev_correct"] > majority, f"{m['label']}: {m['dev_correct']}/{n_dev} is not above the majority " \
                                            f"class ({majority}/{n_dev})"
    # the 0.05-min budget only warns: up front (the estimate), per run, and for the whole demo
    assert res["budget_minutes"] == 0.05 and res["over_budget"] is True
    assert "WARNING: the estimate" in stdout and "WARNING: the demo took" in stdout
    assert all(m["over_time_share"] for m in res["methods"]) and len(res["warnings"]) == 4
    full, mam = res["methods"]
    assert full["trainable"] > full["base"]  # everything, plus the classification head
    # the full model's inference file holds exactly what trained: the LM head tied to the embedding once
    assert full["inference_params"] == full["trainable"]
    assert 4 * full["inference_params"] <= full["inference_bytes"] < 4 * full["inference_params"] + 2_000_000
    assert mam["trainable"] < 0.25 * mam["base"] and 0 < mam["formula"] < 0.05 * mam["base"]
    # a delta checkpoint is a small fraction of the full one
    assert mam["inference_bytes"] < 0.05 * full["inference_bytes"]

    md = (work / "results.md").read_text(encoding="utf-8")
    assert "| method |" in md and "Full fine-tuning" in md and "MAM adapter" in md
    assert f"dev acc (all {n_dev})" in md and md.strip() in stdout.replace("\r", "")
    png = (work / "accuracy_vs_params.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    for stage in ("[1/6]", "[2/6]", "[3/6]", "[4/6]", "[5/6]", "[6/6]"):
        assert stage in stdout
    assert "train_inner" in stdout  # fairseq's own progress lines are shown


def test_quick_demo_data_binarized_for_sentence_prediction(quick):
    work, _ = quick
    bin_dir = work / "data-bin"
    for sub, split in [(s, p) for s in ("input0", "label") for p in ("train", "valid")]:
        for ext in ("bin", "idx"):
            assert (bin_dir / sub / f"{split}.{ext}").stat().st_size > 0
    assert (bin_dir / "input0" / "dict.txt").read_text() == (work / "minilm" / "dict.txt").read_text()
    labels = [ln.split()[0] for ln in (bin_dir / "label" / "dict.txt").read_text().splitlines()]
    assert set(labels[:2]) == {"0", "1"}
    assert len((work / "raw" / "valid.input0").read_text(encoding="utf-8").splitlines()) == dev_size()


def test_missing_data_message(tmp_path):
    missing = tmp_path / "nowhere"
    work = tmp_path / "w"
    proc = subprocess.run(["bash", str(SCRIPT), "--quick", "--workdir", str(work)], capture_output=True,
                          text=True, env=_env(UNIFAIRSEQ_DATA=str(missing)), timeout=120)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr
    assert "Traceback" not in err and "Traceback" not in proc.stdout
    assert f"{missing}/glue/SST-2/train.tsv" in err and "GLUE" in err and "gluebenchmark.com" in err
    assert "UNIFAIRSEQ_DATA=DIR" in err and "--data DIR" in err
    assert not work.exists(), "nothing is written before the data is found"

    # --data wins over the environment, and may name the SST-2 folder itself; a bad file is named
    bad = tmp_path / "SST-2"
    bad.mkdir()
    (bad / "train.tsv").write_text("text\tlabel\nfine\t1\n")
    (bad / "dev.tsv").write_text("sentence\tlabel\nfine\t1\n")
    from unifairseq import demo

    assert demo.main(["--data", str(bad), "--workdir", str(work)]) == 2
    assert not work.exists()
    with pytest.raises(demo.DemoError, match="header"):
        demo.read_sst2_tsv(str(bad / "train.tsv"))
    assert demo.find_sst2(str(bad)) == (str(bad / "train.tsv"), str(bad / "dev.tsv"))
    (bad / "dev.tsv").write_text("sentence\tlabel\nfine\tpositive\n")
    with pytest.raises(demo.DemoError, match=r"dev.tsv:2"):
        demo.read_sst2_tsv(str(bad / "dev.tsv"))
    (bad / "dev.tsv").write_text("sentence\tlabel\nfine\t1\n\nno label here\n")
    with pytest.raises(demo.DemoError, match=r"dev.tsv:4: expected `sentence<TAB>0\|1`"):
        demo.read_sst2_tsv(str(bad / "dev.tsv"))
    (bad / "dev.tsv").write_text("sentence\tlabel\n")
    with pytest.raises(demo.DemoError, match="holds no examples"):
        demo.read_sst2_tsv(str(bad / "dev.tsv"))
    (bad / "dev.tsv").write_text("sentence\tlabel\n  two   spaces \t1\n\t0\n")
    assert demo.read_sst2_tsv(str(bad / "dev.tsv")) == [("two spaces", "1"), ("", "0")]


def test_unknown_method_is_a_usage_error(tmp_path, capsys):
    from unifairseq import demo

    assert demo.main(["--methods", "full,nope", "--workdir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "mam" in err and "Traceback" not in err


def test_train_command_has_no_time_limit(tmp_path):
    """The budget is no longer a fairseq-train --stop-time-hours cap: exactly --max-update updates."""
    from unifairseq.demo.methods import METHODS
    from unifairseq.demo.run import train_command

    imported = dict(model=str(tmp_path / "model.pt"), flags=["--arch", "roberta_base", "--encoder-layers", "6"])
    for m in METHODS.values():
        cmd = train_command(m, imported, str(tmp_path / "bin"), str(tmp_path / "ck"), 1, m.max_update, 10)
        assert not any("stop-time" in c or "stop_time" in c for c in cmd)
        assert cmd[cmd.index("--max-update") + 1] == cmd[cmd.index("--total-num-update") + 1] == str(m.max_update)
        assert cmd[cmd.index("--arch") + 1] == m.arch


def test_budget_warns_and_estimates(capsys):
    from unifairseq.demo.budget import Budget, schedule_estimate_s, train_estimate_s
    from unifairseq.demo.methods import METHODS

    runs = [(m, m.max_update) for m in METHODS.values()]
    est = schedule_estimate_s(runs, 2)
    assert est < schedule_estimate_s(runs, 1)  # two lanes are faster than one
    assert 8 * 60 < est < 16 * 60  # the README's 11.3 min on an idle machine
    b = Budget(18, runs, 2)
    b.announce()
    assert b.warnings == [] and "18 min" in capsys.readouterr().out
    assert b.share_s["full"] > train_estimate_s(METHODS["full"], 220)  # the budget has room to spare
    assert not b.check_run(METHODS["full"], 60) and not b.check_total(17 * 60)
    assert b.check_run(METHODS["mam"], 10 * 60) and b.check_total(19 * 60) and len(b.warnings) == 2
    tight = Budget(1, runs, 2, minutes_per_run=0.5)
    tight.announce()
    assert len(tight.warnings) == 1 and "over the 1-min budget" in tight.warnings[0]
    assert tight.share_s == {m.name: 30.0 for m, _ in runs}


def test_default_data_root(monkeypatch):
    from unifairseq.data.tsv import default_data_root, resolve_data_root

    monkeypatch.setenv("UNIFAIRSEQ_DATA", "/some/where")
    assert default_data_root() == "/some/where" and resolve_data_root("/flag")[0] == "/flag"
    monkeypatch.delenv("UNIFAIRSEQ_DATA")
    assert default_data_root() == os.path.normpath(REPO.parent / "shared" / "data")


def test_plot_marks_the_stored_delta_beside_the_trained_one(tmp_path):
    """The demo's plot puts each method at its trained and at its stored (inference file) share of the base:
    prefix tuning trains its reparametrization MLP, and stores only the folded 2·l·d vectors per layer."""
    from unifairseq.demo.report import plot, stored_pct

    base = 22_744_506
    rows = [dict(name="prefix", label="Prefix tuning", trainable=2_715_778, inference_params=221_954,
                 dev_accuracy=0.805, base=base),
            dict(name="lora", label="LoRA", trainable=222_338, inference_params=222_338, dev_accuracy=0.835,
                 base=base),
            dict(name="full", label="Full fine-tuning", trainable=22_893_116, dev_accuracy=0.853, base=base)]
    for r in rows:
        r["trainable_pct"] = 100.0 * r["trainable"] / base
    assert stored_pct(rows[0]) == pytest.approx(100.0 * 221_954 / base) and stored_pct(rows[2]) is None
    plot(rows, str(tmp_path / "p.png"), "t", 872, 0.509)
    png = (tmp_path / "p.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
