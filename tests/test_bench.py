"""Smoke test of `python -m unifairseq.bench` on tiny shapes: it runs end to end (one subprocess per
method, baselines included) and writes JSON with numbers in every field. No timing assertions."""
from __future__ import annotations

import json
import numbers
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _num(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and x == x  # not NaN


def test_bench_tiny_writes_numeric_json(tmp_path):
    out = tmp_path / "bench.json"
    # one thread: on a shared 2-core machine two OpenMP threads can spin far longer than the tiny ops take
    proc = subprocess.run(
        [sys.executable, "-m", "unifairseq.bench", "--tiny", "--methods", "mam", "lora_attn", "--steps", "1",
         "--warmup", "1", "--gen-runs", "1", "--threads", "1", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| mam |" in proc.stdout and "| lora_attn |" in proc.stdout  # the markdown table
    assert "[5/5] lora_attn" in proc.stderr  # progress lines

    report = json.loads(out.read_text())
    res = report["results"]
    assert report["config"]["optimizer"] == "fused" and report["config"]["malloc"][0] == "retain"
    assert report["config"]["malloc"][1]["MALLOC_TRIM_THRESHOLD_"]
    assert list(res) == ["full", "frozen", "frozen_2d", "mam", "lora_attn"]
    for m, r in res.items():
        assert "error" not in r, (m, r)
        for key in ("trainable", "train_step_s", "train_vs_full", "train_vs_frozen", "train_mem_bytes",
                    "peak_mem_bytes", "decode_s", "decode_vs_base"):
            assert _num(r[key]), (m, key, r.get(key))
        assert all(_num(t) for t in r["train_steps_s"]) and len(r["train_steps_s"]) == 1
        assert r["train_step_s"] > 0 and r["decode_s"] > 0 and r["peak_mem_bytes"] > 0
    for m in ("full", "mam", "lora_attn"):
        assert _num(res[m]["resume_bytes"]) and _num(res[m]["inference_bytes"])
    assert res["frozen"]["trainable"] == res["frozen_2d"]["trainable"] == 0
    assert 0 < res["lora_attn"]["trainable"] < res["mam"]["trainable"]
    # resuming needs the optimizer state and (for MAM) the prefix MLP; the exported file has neither
    assert res["mam"]["inference_bytes"] < res["mam"]["resume_bytes"]
    assert res["lora_attn"]["inference_bytes"] < res["full"]["inference_bytes"]
    assert _num(res["lora_attn"]["decode_merged_s"]) and _num(res["lora_attn"]["decode_merged_vs_base"])
    assert isinstance(res["lora_attn"]["merged_same_hypotheses"], bool)  # float rounding may flip a tie
    assert all(_num(x) for x in report["loadavg_before"] + report["loadavg_after"])
