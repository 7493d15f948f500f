"""unifairseq-search's space (issue 17): read from the method registry, budgets from the plan's
count (checked against built models and the paper's formulas), the paper grid, YAML grids, and
the bad-input lines. No training here (tests/test_search_e2e.py runs real trials)."""
import os
import subprocess
from pathlib import Path
import sys

import pytest

from env import tool_env
from tiny import DIM, FFN_DIM, LAYERS, tiny_roberta
import unifairseq.fairseq.models  # noqa: F401  (registers the delta architectures tiny_roberta builds)
from unifairseq.core.methods import ALL_KINDS, METHODS, Method, ModelShape, Spec, register_method
from unifairseq.search import space as sp
from unifairseq.search.spacefile import file_grid
from unifairseq.search.errors import SearchError

ROBERTA_BASE = ModelShape.encoder_only(768, 3072, 12, 102_000)
BASE_PARAMS = 124_645_632


def test_every_registry_method_is_in_the_space():
    methods = {c.method for d in sp.registry_designs() for c in d.sides()}
    assert methods == set(METHODS)
    labels = [d.label for d in sp.registry_designs()]
    assert len(labels) == len(set(labels))
    # the paper's dimensions are there: insertion, representation, composition, MAM
    for want in ("adapter.ffn.parallel", "adapter.ffn.sequential", "adapter.attn.parallel", "lora.attn",
                 "lora.ffn", "adapter.ffn.parallel.s=4.0", "prefix.attn.concat+adapter.ffn.parallel.s=4.0"):
        assert want in labels
    # pfeiffer is sequential (the plan builds the same thing): one design, not two
    assert not any("pfeiffer" in l for l in labels)


def test_a_method_added_to_the_registry_joins_the_space():
    """A new method module (a toy attention-output form: 3*r*d per attention sub-layer) is in the
    space with its size range from its preset, and the budget cuts its range by its own formula."""

    class Toy(Method):
        name = "toy_search"
        attn_modes = ("toy_search",)
        presets = {"toy_search": dict(attn_mode="toy_search", attn_bn=10)}

        def specs(self, cfg):
            return [Spec(self.name, "attn_out", ALL_KINDS, {"r": cfg.attn_bn})]

        def formula(self, spec, shape):
            return 3 * spec.opts["r"] * shape.d * shape.attn(spec.kinds)

    register_method(Toy)
    try:
        designs = {d.label: d for d in sp.registry_designs()}
        assert "toy_search.attn" in designs
        toy = designs["toy_search.attn"]
        assert toy.attn.size == (1, 20)  # up to twice its preset's size
        assert "toy_search.attn+adapter.ffn.parallel" in designs  # and it combines with the FFN side
        budget = 3 * 7 * 768 * 12 + 5  # r = 7 fits, r = 8 does not
        entry = {e.design.label: e for e in sp.registry_space(ROBERTA_BASE, budget)}["toy_search.attn"]
        assert entry.ranges == {"attn": (1, 7)}
    finally:
        del METHODS["toy_search"]
    assert "toy_search.attn" not in {d.label for d in sp.registry_designs()}


def test_paper_grid_sizes_are_the_largest_within_each_budget():
    points = sp.paper_grid(ROBERTA_BASE, BASE_PARAMS, ["0.1%", "1%"])
    groups = {p.group for p in points}
    assert groups == {"insertion", "representation", "composition", "mam"}
    d, L = 768, 12
    for p in points:
        budget = sp.parse_budget(p.extra["budget"], BASE_PARAMS)
        assert p.stored == sp.stored_count(p.flags, ROBERTA_BASE) <= budget
        f = p.flags
        if f.get("ffn_mode") == "adapter" and f.get("attn_mode") is None:
            assert p.stored == 2 * f["ffn_bn"] * d * L  # the paper's 2rd per FFN
            assert 2 * (f["ffn_bn"] + 1) * d * L > budget  # the largest r that fits
        if f.get("attn_mode") == "lora":
            assert p.stored == 4 * f["attn_bn"] * d * L  # W_q and W_v: 2 x r(d + d)
        if f.get("attn_mode") == "prefix" and f.get("ffn_mode") is None:
            assert p.stored == 2 * f["attn_bn"] * d * L  # P_k, P_v: 2ld
    budgets = {p.extra["budget"] for p in points if p.group == "mam"}
    assert budgets == {"0.1%", "1%"}


@pytest.mark.parametrize("budget", ["0.5%", "1%"])
def test_counts_equal_the_built_models(budget):
    """The count the search filters on (the plan alone) is the count a built model reports."""
    shape = ModelShape.encoder_only(DIM, FFN_DIM, LAYERS)
    base = 40_000
    for p in sp.paper_grid(shape, base, [budget])[:6]:
        model, _, _ = tiny_roberta("delta_roberta_base", p.argv())
        assert model.delta_report["formula"] == p.stored, p.label


def test_budget_parsing_and_filtering():
    assert sp.parse_budget("0.5%", 1_000_000) == 5000
    assert sp.parse_budget("1.2e4", 1) == 12000
    for bad in ("lots", "-1%", "0"):
        with pytest.raises(SearchError, match="budget"):
            sp.parse_budget(bad, 1000)
    pts = sp.paper_grid(ROBERTA_BASE, BASE_PARAMS, ["1%"])
    kept = sp.within(pts, 1_220_000)
    assert kept and all(p.stored <= 1_220_000 for p in kept) and len(kept) < len(pts)
    with pytest.raises(SearchError, match="below every point .* raise --budget"):
        sp.within(pts, 10)
    with pytest.raises(SearchError, match="below every point"):
        sp.registry_space(ROBERTA_BASE, 10)


def write(tmp_path, text):
    path = tmp_path / "space.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_yaml_grid_expands_lists_and_presets(tmp_path):
    path = write(tmp_path, "points:\n  - preset: lora_attn\n    attn_bn: [2, 4]\n"
                           "  - ffn_mode: adapter\n    ffn_option: parallel\n    ffn_bn: 8\n")
    pts = file_grid(path, ROBERTA_BASE)
    assert [p.flags.get("attn_bn", p.flags.get("ffn_bn")) for p in pts] == [2, 4, 8]
    assert pts[0].flags["lora_alpha"] == 32.0 and pts[0].stored == 4 * 2 * 768 * 12
    assert pts[2].stored == 2 * 8 * 768 * 12


@pytest.mark.parametrize("text,message", [
    ("points:\n  - ffn_mode: adapter\n    ffn_bottleneck: 8\n", "unknown flag 'ffn_bottleneck'"),
    ("points:\n  - preset: no_such\n", "unknown method \\(preset\\) 'no_such'"),
    ("points:\n  - attn_mode: no_such\n", "unknown method --attn-mode 'no_such'"),
    ("points:\n  - attn_mode: lora\n    attn_bn: 0\n", "--attn-bn: must be a positive"),
    ("just text", "expected a list of points"),
])
def test_bad_space_files_name_the_fix(tmp_path, text, message):
    with pytest.raises(SearchError, match=message):
        file_grid(write(tmp_path, text), ROBERTA_BASE)


def test_bad_storage_task_metric_data_are_one_line(tmp_path):
    from unifairseq.search import study, trial

    with pytest.raises(SearchError, match="cannot connect"):
        study.storage(f"sqlite:///{tmp_path}/no/such/dir/s.db")
    with pytest.raises(SearchError, match="do not produce it; choose one of accuracy"):
        trial.check_metric("SST-2", "bleu")
    (tmp_path / "data" / "bin" / "input0").mkdir(parents=True)
    with pytest.raises(SearchError, match="bin/input0/train.idx is missing"):
        trial.check_data("SST-2", str(tmp_path / "data"))


@pytest.mark.parametrize("args,message", [
    (["--data", "{tmp}/none", "--tiny"], "--data {tmp}/none: no such folder"),
    (["--worker", "--storage", "sqlite:///{tmp}/x.db", "--study", "nope"], "--study nope: no such study"),
    (["--data", "{tmp}", "--tiny", "--metric", "bleu"], "--metric bleu: the SST-2 runs do not produce it"),
    (["--demo", "--tiny"], "--demo trains SST-2 on the packaged MiniLM itself; drop --tiny"),
    (["--data", "{tmp}", "--tiny", "--train-examples", "64"], "--train-examples is for --demo"),
    (["--demo", "--data", "{tmp}/none", "--out", "{tmp}/o"], "--demo: GLUE SST-2 not found: expected {tmp}/none/glue/SST-2/train.tsv"),
    (["--task", "XSum", "--data", "{tmp}", "--tiny", "--metric", "accuracy"],
     "--metric accuracy: the XSum runs do not produce it; choose one of rouge2, rouge1, rougeL, loss"),
])
def test_cli_bad_input_exits_2_with_one_line(tmp_path, args, message):
    args = [a.format(tmp=tmp_path) for a in args]
    proc = subprocess.run([sys.executable, "-m", "unifairseq.search.cli", *args], capture_output=True, text=True,
                          env=tool_env(), timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.startswith("unifairseq-search: error:")]
    assert len(lines) == 1 and message.format(tmp=tmp_path) in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_front_and_best_per_budget():
    from unifairseq.search import report

    def row(n, stored, metric, state="COMPLETE"):
        return dict(number=n, state=state, stored_params=stored, metric=metric, label=f"t{n}")

    rows = [row(0, 100, 80.0), row(1, 200, 85.0), row(2, 300, 84.0), row(3, 50, 70.0), row(4, 200, 85.0),
            row(5, 10, "", "FAIL"), row(6, 400, 90.0)]
    front = report.front(rows, maximize=True)
    assert [r["number"] for r in front] == [3, 0, 1, 4, 6]  # 2 is beaten by 1 (fewer stored, higher metric)
    best = report.best_per_budget(rows, {"a": 40, "b": 250, "c": 1000}, maximize=True)
    assert best["a"] is None and best["b"]["number"] == 1 and best["c"]["number"] == 6
    assert [r["number"] for r in report.front(rows, maximize=False)] == [3]  # loss: lower is better


def test_base_is_found_by_name_as_by_every_tool(tmp_path, monkeypatch):
    """--base takes a base name as every tool does (core/bases.py's search order, here $UNIFAIRSEQ_BASES),
    and a name that is nowhere is one line naming what was tried."""
    import shutil

    from unifairseq.search.cli import find_search_base
    from unifairseq.search.errors import SearchError

    fixture = Path(__file__).parent / "fixtures" / "v1_folder" / "base" / "model.pt"  # a tiny plain BART base
    (tmp_path / "bases" / "tiny.one").mkdir(parents=True)
    shutil.copy(fixture, tmp_path / "bases" / "tiny.one" / "model.pt")
    monkeypatch.setenv("UNIFAIRSEQ_BASES", str(tmp_path / "bases"))
    assert find_search_base("tiny.one") == str(tmp_path / "bases" / "tiny.one" / "model.pt")
    assert find_search_base(str(fixture)) == str(fixture)
    with pytest.raises(SearchError, match=r"^--base: .*nowhere.*") as e:
        find_search_base("nowhere")
    assert "\n" not in str(e.value)


FAKE_TRAIN = r'''
import json, os, sys, time
folder = sys.argv[sys.argv.index("--save-dir") + 1]
bn = int(sys.argv[sys.argv.index("--attn-bn") + 1])
os.makedirs(folder, exist_ok=True)
json.dump(["fairseq-train", "--attn-bn", str(bn)], open(os.path.join(folder, "train_args.json"), "w"))
n, value = (3, 80.0 + bn) if bn < 50 else (20, 10.0)  # the last points: low from the first validation on
with open(os.path.join(folder, "train.log"), "a") as log:
    for step in range(1, n + 1):
        rec = {"epoch": step, "valid_accuracy": value + step, "valid_num_updates": step}
        log.write("2026-12-03 00:00:00 | INFO | valid | " + json.dumps(rec) + "\n")
        log.flush()
        time.sleep(0.3)
'''


def test_median_pruning_stops_a_low_run_on_its_validation_records(tmp_path, monkeypatch):
    """--objective metric: once 5 trials are complete, a run whose validation accuracy lies below their median at
    the same update is stopped there (its process group ended: its log holds fewer records than it would
    write), recorded PRUNED, and the study goes on. The runs are a stand-in script writing fairseq's valid
    records, through the search's own study, objective and run loop."""
    import optuna

    from unifairseq.core.methods.base import ModelShape
    from unifairseq.search import study as st
    from unifairseq.search import trial as tr

    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAIN)
    monkeypatch.setattr(tr, "command", lambda task, data, folder, flags, *a, **k: [
        sys.executable, str(script), "--save-dir", folder, *flags])
    bns = [1, 2, 3, 4, 5, 90, 91]
    cfg = dict(task="SST-2", data=str(tmp_path), base="unused", tiny=False, epochs=None, seed=0, extra=[],
               metric="accuracy", maximize=True, objective="metric", sampler="tpe", grid=True,
               points=[dict(label=f"lora_r{b}", method="lora", flags={"attn_bn": b}, stored=100 * b, group="")
                       for b in bns],
               methods=None, budget=10 ** 6, n_trials=len(bns), out=str(tmp_path / "out"), trial_timeout=60,
               shape=dict(vars(ModelShape.encoder_only(16, 32, 2))), base_params=10 ** 7, budgets="",
               space_key="paper")
    url = f"sqlite:///{tmp_path / 'search.db'}"
    st.open_study(url, "prune", cfg)
    st.work(url, "prune", str(tmp_path / "out"))
    trials = optuna.load_study(study_name="prune", storage=url).get_trials()
    states = {t.user_attrs["label"]: t.state.name for t in trials}
    assert states == {**{f"lora_r{b}": "COMPLETE" for b in bns[:5]}, "lora_r90": "PRUNED", "lora_r91": "PRUNED"}
    for t in trials:
        written = len(tr.valid_records(os.path.join(t.user_attrs["folder"], "train.log")))
        assert written == 3 if t.state.name == "COMPLETE" else 1 <= written < 20, (t.user_attrs["label"], written)
    assert [t.value for t in trials if t.state.name == "COMPLETE"] == [84.0, 85.0, 86.0, 87.0, 88.0]


def test_demo_grid_is_the_adapter_at_four_designs_and_matched_budgets():
    """--space demo (what --demo walks): sequential vs parallel FFN, attention vs FFN, plain vs scaled, each the
    adapter's form, sized to the largest r within each budget on MiniLM's shape (d 384, d_ff 1536, 6 layers)."""
    shape, base = ModelShape.encoder_only(384, 1536, 6), 22_744_506
    points = sp.paper_grid(shape, base, ["0.1%", "5%"], sp.DEMO_GROUPS, mam=False)
    kinds = [(p.flags.get("attn_mode"), p.flags.get("ffn_mode"), p.flags.get("ffn_option") or p.flags.get("attn_option"),
              p.flags.get("ffn_adapter_scalar"), p.group, p.extra["budget"]) for p in points]
    designs = [(None, "adapter", "sequential", 1.0, "insertion"), (None, "adapter", "parallel", 1.0, "insertion"),
               ("adapter", None, "parallel", None, "representation"), (None, "adapter", "parallel", 4.0, "composition")]
    assert kinds == [d + (b,) for b in ("0.1%", "5%") for d in designs]
    d, L = 384, 6
    for p in points:
        budget = sp.parse_budget(p.extra["budget"], base)
        r = p.flags.get("ffn_bn") or p.flags.get("attn_bn")
        assert p.stored == 2 * r * d * L <= budget < 2 * (r + 1) * d * L  # the paper's 2rd, the largest r that fits
    assert [p.flags.get("ffn_bn") or p.flags.get("attn_bn") for p in points] == [4] * 4 + [246] * 4


def test_markdown_table_marks_the_front():
    from unifairseq.search import report

    rows = [dict(number=0, state="COMPLETE", label="adapter.ffn.parallel ffn_bn=4", group="insertion", budget="0.1%",
                 stored_params=18432, stored_pct=0.081, metric=80.5, wall_s=12.3),
            dict(number=1, state="COMPLETE", label="adapter.ffn.sequential ffn_bn=4", group="insertion",
                 budget="0.1%", stored_params=18432, stored_pct=0.081, metric=79.0, wall_s=11.0),
            dict(number=2, state="FAIL", label="adapter.attn.parallel attn_bn=4", group="representation", budget="",
                 stored_params="", stored_pct="", metric="", wall_s="")]
    lines = report.markdown(rows, dict(metric="accuracy", maximize=True)).splitlines()
    assert lines[2] == "| 0 | `adapter.ffn.parallel ffn_bn=4` | insertion | 0.1% | 18,432 | 0.081 | 80.5 * | 12 | COMPLETE |"
    assert lines[3].endswith("| 79.0 | 11 | COMPLETE |") and lines[4].endswith("|  |  | FAIL |")
    assert report.design("adapter.ffn.parallel.s=4.0 ffn_bn=246") == "adapter.ffn.parallel.s=4.0"
