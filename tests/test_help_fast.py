"""`--help` of every unifairseq console script imports neither torch nor fairseq (issue 19 item 7), nor
optuna (issue 17): the parsers are built from light modules and the heavy imports wait in the functions
that run a command. Each script runs in a fresh interpreter as its entry point would; the imported modules are asserted,
not the time (printed for information: `pytest -s`)."""
import json
import subprocess
import sys
import time
import tomllib

import pytest

from env import REPO

SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
PROBE = r'''
import importlib, json, sys
module, func = sys.argv[1].split(":")
sys.argv = [sys.argv[2], "--help"]
try:
    code = getattr(importlib.import_module(module), func)()
except SystemExit as e:
    code = e.code
heavy = sorted(m for m in ("torch", "fairseq", "transformers", "optuna") if m in sys.modules)
print(json.dumps({"code": code, "heavy": heavy}))
'''


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_help_imports_neither_torch_nor_fairseq(script):
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PROBE, SCRIPTS[script], script], capture_output=True, text=True,
                          timeout=120)
    took = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-2000:]
    *usage, result = proc.stdout.strip().splitlines()
    result = json.loads(result)
    print(f"{script} --help: {took:.2f}s")
    assert result["code"] in (0, None), proc.stdout[-2000:]
    assert usage and usage[0].startswith(f"usage: {script}"), proc.stdout[:500]
    assert result["heavy"] == [], f"{script} --help imported {result['heavy']}"
    assert "tensorboardX" not in proc.stderr, proc.stderr
