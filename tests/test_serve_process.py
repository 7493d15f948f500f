"""unifairseq-serve as a process: --help, a bad base as one line (exit 2), and SIGTERM draining: the
requests already accepted are answered, new ones are refused with 503 and Retry-After, then exit 0."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from servehelp import free_port, make_bart, request, server_args, subprocess_server, wait_ready


def test_help_and_a_bad_base_is_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "unifairseq.serve.cli", "--help"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and "usage: unifairseq-serve" in out.stdout and "--max-wait-ms" in out.stdout
    env = {**os.environ, "UNIFAIRSEQ_BASES": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "unifairseq.serve.cli", "--base", "nowhere.bart", "--bpe", "none",
                          "--port", str(free_port())], capture_output=True, text=True, timeout=120, env=env)
    errors = [line for line in out.stderr.splitlines() if line.startswith("unifairseq-serve: error:")]
    assert out.returncode == 2 and len(errors) == 1 and "nowhere.bart" in errors[0], out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    out = subprocess.run([sys.executable, "-m", "unifairseq.serve.cli", "--base", "x", "--delta", "a=/nonexistent"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--delta 'a=/nonexistent'" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
def test_sigterm_drains_then_exits_0(tmp_path):
    d, data, folder = make_bart(tmp_path, steps=1)
    port = free_port()
    argv = server_args(data, folder, port, "--delta", "lora", "--delta", "mam", "--max-batch", "1",
                       "--max-wait-ms", "0")
    body = {"text": " ".join(f"w{i}" for i in range(10)), "beam": 4, "min_len": 60, "max_len": 60}
    with subprocess_server(argv, env={"UNIFAIRSEQ_BASES": str(tmp_path / "bases")}) as proc:
        wait_ready(port, proc)
        with ThreadPoolExecutor(12) as pool:
            accepted = [pool.submit(request, port, "POST", "/v1/generate", {**body, "delta": ("lora", "mam")[i % 2]})
                        for i in range(12)]
            for _ in range(1000):  # all 12 accepted (queued, computing or done; one per batch), some still queued
                text = request(port, "GET", "/metrics")[2]
                depth = int(re.search(r"^unifairseq_serve_queue_depth (\d+)", text, re.M).group(1))
                done = re.search(r'^unifairseq_serve_batches_total\{kind="generate"\} (\d+)', text, re.M)
                if depth >= 2 and depth + (int(done.group(1)) if done else 0) >= 11:
                    break
                time.sleep(0.005)
            else:
                raise AssertionError("the requests were not queued")
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.05)
            status, headers, out = request(port, "POST", "/v1/generate", {**body, "delta": "lora"})
            assert status == 503 and headers["retry-after"] == "1" and "shutting down" in out["error"]["message"]
            assert request(port, "GET", "/health")[0] == 503
            answers = [f.result(timeout=120) for f in accepted]
        assert [a[0] for a in answers] == [200] * 12, "every accepted request is answered"
        lengths = [len(a[2]["hypotheses"][0]["tokens"]) for a in answers]
        assert lengths == [61] * 12, lengths  # 60 tokens (min_len = max_len), then </s>
        assert proc.wait(timeout=60) == 0
        log = [json.loads(line) for line in proc.stderr.read().splitlines() if line.startswith("{")]
    assert any(r.get("msg") == "drained" for r in log)
    assert sum(1 for r in log if r.get("path") == "/v1/generate" and r.get("status") == 200) == 12
