"""unifairseq-serve-loadtest end to end, small: it builds its tiny base and deltas, runs mixed and one-at-a-
time scheduling, SIGTERM and PUT/DELETE mid-load, checks nothing is lost and a sample against decoding
alone, and stops by itself."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_loadtest_small_run(tmp_path):
    out = tmp_path / "rows.json"
    run = subprocess.run([sys.executable, "-m", "unifairseq.serve.loadtest", "--deltas", "2", "--modes", "mixed",
                          "single", "--clients", "3", "--seconds", "2", "--events-deltas", "1", "--sample", "4",
                          "--workdir", str(tmp_path / "work"), "--json", str(out), "--markdown"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = {r["run"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"mixed", "single", "sigterm mid-load", "PUT/DELETE mid-load"}
    for name in ("mixed", "single", "PUT/DELETE mid-load"):
        r = rows[name]
        assert r["ok"] == r["requests"] == r["server_counted"] > 0 and r["checked_alone"] == 4, r
    assert rows["single"]["mean_batch"] == 1.0
    assert rows["PUT/DELETE mid-load"]["admin_cycles"] >= 1
    term = rows["sigterm mid-load"]
    assert term["exit"] == 0 and term["ok"] > 0 and term["statuses"].get("503", 0) > 0, term
    assert not [k for k in term["statuses"] if k.startswith("lost")], term
    assert "| mixed | 2 |" in run.stdout
