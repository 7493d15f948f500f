"""`python -m unifairseq.bench` on tiny shapes: it runs end to end in interleaved rounds (one subprocess
per row and round, baselines included), also against a second checkout, and writes JSON with numbers
in every field. No timing assertions. The summary, target and merged-decode logic is also tested on
made-up numbers, where the right answer is known."""
from __future__ import annotations

import json
import numbers
import subprocess
import sys
from pathlib import Path

import pytest

from unifairseq.bench import cli
from unifairseq.bench.mergecheck import compare_decodes
from unifairseq.bench.report import add_ratios, check_targets, compare, merged_checks, summarize

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
# one thread: on a shared 2-core machine two OpenMP threads can spin far longer than the tiny ops take
TINY = ["--tiny", "--steps", "1", "--warmup", "1", "--gen-runs", "1", "--threads", "1"]


def _num(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and x == x  # not NaN


def _bench(tmp_path, *args):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "unifairseq.bench", *TINY, *args, "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, json.loads(out.read_text())


def test_bench_tiny_rounds_write_medians_and_every_round(tmp_path):
    proc, report = _bench(tmp_path, "--methods", "mam", "lora_attn", "--rounds", "2")
    assert "| mam |" in proc.stdout and "| lora_attn |" in proc.stdout  # the markdown tables
    assert "[round 1/2, 5/5]" in proc.stderr and "[round 2/2, 5/5]" in proc.stderr  # progress lines
    assert "Merged LoRA decode vs unmerged: same" in proc.stdout and ", 1 thread, Adam fused" in proc.stdout

    res = report["results"]
    assert report["config"]["optimizer"] == "fused" and report["config"]["malloc"][0] == "retain"
    assert report["config"]["malloc"][1]["MALLOC_TRIM_THRESHOLD_"] and report["config"]["rounds"] == 2
    assert list(res) == ["full", "frozen", "frozen_2d", "mam", "lora_attn"]
    for m, r in res.items():
        assert "error" not in r and r["rounds_ok"] == 2, (m, r)
        for key in ("train_step_s", "train_vs_full", "train_vs_frozen", "train_mem_bytes", "peak_mem_bytes",
                    "decode_s", "decode_vs_base"):
            lo, hi = r[key + "_range"]
            assert _num(r[key]) and _num(lo) and _num(hi) and lo <= r[key] <= hi, (m, key, r.get(key))
        assert r["train_step_s"] > 0 and r["decode_s"] > 0 and r["peak_mem_bytes"] > 0
    for m in ("full", "mam", "lora_attn"):
        assert _num(res[m]["resume_bytes"]) and _num(res[m]["inference_bytes"])
    assert res["frozen"]["trainable"] == res["frozen_2d"]["trainable"] == 0
    assert 0 < res["lora_attn"]["trainable"] < res["mam"]["trainable"]
    # resuming needs the optimizer state and (for MAM) the prefix MLP; the exported file has neither
    assert res["mam"]["inference_bytes"] < res["mam"]["resume_bytes"]
    assert res["lora_attn"]["inference_bytes"] < res["full"]["inference_bytes"]
    assert _num(res["lora_attn"]["decode_merged_s"]) and _num(res["lora_attn"]["decode_merged_vs_base"])

    # every round's raw numbers, its rows in a rotated order, ratios within the round
    assert [rnd["round"] for rnd in report["rounds"]] == [1, 2]
    assert report["rounds"][1]["order"] == ["frozen", "frozen_2d", "mam", "lora_attn", "full"]
    for rnd in report["rounds"]:
        assert list(rnd["results"]) == list(res)
        for m, r in rnd["results"].items():
            assert len(r["train_steps_s"]) == 1 and all(_num(t) for t in r["train_steps_s"])
        mam, frozen = rnd["results"]["mam"], rnd["results"]
        assert mam["train_vs_frozen"] == mam["train_step_s"] / min(frozen["frozen"]["train_step_s"],
                                                                   frozen["frozen_2d"]["train_step_s"])
        check = rnd["results"]["lora_attn"]["merged_check"]  # the real check, on a real merge
        assert check["ok"] and check["failures"] == [] and check["sentences"] == 2
        assert check["max_rescore_diff"] <= check["tol"]
    assert report["merged_decode_check"]["ok"] and report["merged_decode_check"]["checked"] == 2

    assert report["targets_judged"] is False  # --tiny: shown, not judged
    for name in ("mam_train_vs_frozen", "mam_decode_vs_base", "lora_merged_decode_vs_base"):
        t = report["targets"][name]
        assert t["met"] is None and len(t["rounds"]) == 2 and t["range"][0] <= t["value"] <= t["range"][1]
    assert all(_num(x) for x in report["loadavg_before"] + report["loadavg_after"])


def test_bench_compare_with_itself_runs_both_sides(tmp_path):
    proc, report = _bench(tmp_path, "--methods", "lora_attn", "--rounds", "1", "--compare-with", str(REPO))
    assert "lora_attn before" in proc.stderr and "lora_attn after" in proc.stderr
    assert "Before (" in proc.stdout and "| train after/before |" in proc.stdout
    assert report["compare_with"] == str(REPO.resolve())
    rnd = report["rounds"][0]
    assert rnd["sides_order"] == ["before", "after"]
    rows = ["full", "frozen", "frozen_2d", "lora_attn"]
    assert list(rnd["results"]) == list(rnd["before"]) == list(report["before"]) == list(report["compare"]) == rows
    for m in rows:
        for side in (rnd["results"][m], rnd["before"][m]):
            assert "error" not in side and _num(side["train_step_s"]) and _num(side["decode_s"])
        for k in ("train_step_s", "decode_s"):
            q = report["compare"][m][k]
            assert _num(q["before"]) and _num(q["after"]) and _num(q["ratio"])
            assert q["slower"] is None  # one round: no spread to judge by
            assert q["ratio"] == rnd["results"][m][k] / rnd["before"][m][k]
    assert _num(report["compare"]["lora_attn"]["decode_merged_s"]["ratio"])
    assert report["merged_decode_check"]["checked"] == 2  # both sides checked their merge


def test_bench_rejects_a_folder_that_is_no_checkout(tmp_path):
    assert cli.main(["--tiny", "--methods", "lora_attn", "--compare-with", str(tmp_path)]) == 2


# ------------------------------------------------------------------ the logic, on made-up numbers
def _hyp(tokens, scores):
    return dict(tokens=tokens, positional_scores=scores)


def test_compare_decodes_flags_what_differs():
    u = [_hyp([5, 6, 2], [-1.0, -2.0, -0.5]), _hyp([7, 8, 2], [-1.5, -1.0, -0.7])]
    assert compare_decodes(u, u, [h["positional_scores"] for h in u])["ok"]
    # other tokens and no rescoring to tell a tie: flagged
    other = [u[0], _hyp([7, 9, 2], [-1.5, -1.2, -0.6])]
    c = compare_decodes(u, other)
    assert not c["ok"] and c["same_tokens"] == 1 and "sentence 1" in c["failures"][0] and "token 1" in c["failures"][0]
    # the same tokens with other scores: flagged
    c = compare_decodes(u, [u[0], _hyp([7, 8, 2], [-1.5, -1.01, -0.7])])
    assert not c["ok"] and "positional scores differ" in c["failures"][0]
    # other tokens, but the merged model scores the unmerged hypothesis as the unmerged model did: a tie flip
    c = compare_decodes(u, other, [h["positional_scores"] for h in u])
    assert c["ok"] and c["tie_flips"] == 1
    # ... and where it scores it differently, a wrong merge
    c = compare_decodes(u, other, [u[0]["positional_scores"], [-1.5, -1.1, -0.7]])
    assert not c["ok"] and "scores the unmerged hypothesis differently" in c["failures"][0]
    assert not compare_decodes(u, u[:1])["ok"]


def _round(r, times, merged_ok=True):
    res = {m: dict(method=m, trainable=0, train_step_s=t, decode_s=t) for m, t in times.items()}
    res["lora_attn"].update(decode_merged_s=times["lora_attn"],
                            merged_check=dict(ok=merged_ok, tie_flips=0, max_rescore_diff=0.0,
                                              failures=[] if merged_ok else ["sentence 0: differs"]))
    add_ratios(res)
    return dict(round=r, results=res)


def test_ratios_within_rounds_median_over_rounds_and_targets():
    # round 2 ran under twice the load: every row twice as slow, the ratios unchanged
    rounds = [_round(1, dict(full=2.0, frozen=1.0, frozen_2d=1.1, mam=1.10, lora_attn=1.0)),
              _round(2, dict(full=4.0, frozen=2.0, frozen_2d=2.2, mam=2.40, lora_attn=2.0)),
              _round(3, dict(full=2.0, frozen=1.0, frozen_2d=1.0, mam=1.12, lora_attn=1.0))]
    s = summarize(rounds)
    assert s["mam"]["train_step_s"] == 1.12 and s["mam"]["train_step_s_range"] == [1.10, 2.40]
    assert abs(s["mam"]["train_vs_frozen"] - 1.12) < 1e-9 and s["mam"]["rounds_ok"] == 3
    t = check_targets(rounds, judged=True)["mam_train_vs_frozen"]
    assert abs(t["value"] - 1.12) < 1e-9 and abs(t["range"][1] - 1.2) < 1e-9 and t["met"] is True
    assert check_targets(rounds, judged=False)["mam_train_vs_frozen"]["met"] is None
    assert check_targets(rounds, judged=True)["mam_decode_vs_base"]["met"] is True  # 0.55-0.6x
    assert merged_checks(rounds)["ok"] and merged_checks(rounds)["checked"] == 3
    rounds[1] = _round(2, dict(full=4.0, frozen=2.0, frozen_2d=2.2, mam=2.40, lora_attn=2.0), merged_ok=False)
    mc = merged_checks(rounds)
    assert not mc["ok"] and mc["failures"] == ["round 2 lora_attn: sentence 0: differs"]


def test_compare_flags_slower_only_beyond_the_spread():
    before = [dict(full=2.0, frozen=1.0, frozen_2d=1.0, mam=1.1, lora_attn=1.0),
              dict(full=2.2, frozen=1.1, frozen_2d=1.1, mam=1.2, lora_attn=1.1),
              dict(full=2.1, frozen=1.0, frozen_2d=1.0, mam=1.15, lora_attn=1.0)]
    after = [dict(full=2.1, frozen=1.0, frozen_2d=1.0, mam=1.3, lora_attn=1.05),
             dict(full=2.1, frozen=1.1, frozen_2d=1.1, mam=1.4, lora_attn=1.0),
             dict(full=2.0, frozen=1.0, frozen_2d=1.0, mam=1.3, lora_attn=1.0)]
    rounds = [dict(_round(i + 1, a), before=_round(i + 1, b)["results"]) for i, (b, a) in enumerate(zip(before, after))]
    c = compare(rounds)
    assert c["mam"]["train_step_s"]["slower"] and not c["full"]["train_step_s"]["slower"]
    assert not c["lora_attn"]["decode_s"]["slower"]
    assert c["mam"]["train_step_s"]["ratio_range"] == [1.3 / 1.15, 1.3 / 1.1]
    assert compare(rounds[:2])["mam"]["train_step_s"]["slower"] is None  # two rounds: too few to judge


def test_merged_decode_failure_is_an_error_exit_and_in_the_json(tmp_path, monkeypatch):
    def fake_rounds(o, methods, common, before=None):
        return [_round(r + 1, dict(full=2.0, frozen=1.0, frozen_2d=1.0, lora_attn=1.0), merged_ok=r != 1)
                for r in range(o.rounds)]

    monkeypatch.setattr(cli, "run_rounds", fake_rounds)  # the name unifairseq.bench.cli calls
    out = tmp_path / "bench.json"
    assert cli.main(["--tiny", "--methods", "lora_attn", "--json", str(out)]) == 1
    mc = json.loads(out.read_text())["merged_decode_check"]
    assert mc["ok"] is False and mc["failures"] == ["round 2 lora_attn: sentence 0: differs"]
