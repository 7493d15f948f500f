"""`unifairseq-serve-loadtest`: K concurrent clients send requests spread over N deltas for T seconds to a
unifairseq-serve it starts on loopback, under three schedulings:

  mixed      this server: a batch holds any deltas (--scheduling mixed)
  one-delta  a batch holds one delta (--scheduling one-delta)
  single     one request at a time (--max-batch 1)

and reports throughput and p50/p95/p99 latency. Every run checks that nothing is lost (every request
sent has exactly one answer, and the server counted as many as the clients sent) and compares a sample of
answers with decoding that request alone with its delta. Two more runs: SIGTERM in the middle of the load
(accepted requests answered, the rest refused, exit 0) and PUT/DELETE of a delta in the middle of the load.

Loopback only; bounded: at most --seconds per run and --max-requests per run; it stops by itself. Without
--workdir it builds a tiny base and deltas (serve/tinyset.py) in a temporary folder, removed at the end.

  unifairseq-serve-loadtest --deltas 1 8 32 --clients 16 --seconds 10 --markdown
"""
from __future__ import annotations

import http.client
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List, Optional

from unifairseq import cli

PROG = "unifairseq-serve-loadtest"
MODES = {"mixed": ["--scheduling", "mixed"], "one-delta": ["--scheduling", "one-delta"], "single": ["--max-batch", "1"]}
TOKEN = "loadtest-admin"


class LoadTestError(cli.ToolError):
    pass


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port: int, path: str, timeout: float = 5.0):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read().decode()
    finally:
        c.close()


class Server:
    """unifairseq-serve as a subprocess on a free loopback port."""

    def __init__(self, setup: dict, names: List[str], extra: List[str], threads: int):
        self.port = _port()
        argv = [sys.executable, "-m", "unifairseq.serve.cli", "--base", setup["base"], "--data", setup["data"],
                "--bpe", "none", "--source-lang", "src", "--target-lang", "tgt", "--delta-dir", setup["deltas"],
                "--host", "127.0.0.1", "--port", str(self.port), "--threads", str(threads),
                "--admin-token", TOKEN, "--max-queue", "1024", *[a for n in names for a in ("--delta", n)], *extra]
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=self.log, text=True)
        end = time.monotonic() + 300
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise LoadTestError(f"the server exited with {self.proc.returncode}: {self.log.read()[-800:]}")
            try:
                if _get(self.port, "/health")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise LoadTestError("the server did not become ready in 300 s")

    def metrics(self) -> Dict[str, float]:
        out = {}
        for line in _get(self.port, "/metrics")[1].splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                out[key] = float(value)
        return out

    def access(self) -> Dict[str, int]:
        """request id -> HTTP status, from the server's JSON access log."""
        self.log.flush()
        self.log.seek(0)
        out = {}
        for line in self.log.read().splitlines():
            if line.startswith("{") and '"request_id"' in line:
                rec = json.loads(line)
                if rec.get("request_id"):
                    out[rec["request_id"]] = rec["status"]
        return out

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


def _text(rng: random.Random, words: int) -> str:
    return " ".join(f"w{rng.randrange(words)}" for _ in range(rng.randint(4, 12)))


def _clients(port: int, names: List[str], k: int, seconds: float, max_requests: int, words: int, beam: int,
             max_len: int, stop: threading.Event, seed: int = 0) -> List[dict]:
    """K threads, each a keep-alive connection sending one request at a time until the time or count is up."""
    records: List[dict] = []
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def client(i: int):
        rng = random.Random(seed * 1000 + i)
        conn = None
        while time.monotonic() < end and not stop.is_set():
            with lock:
                if len(records) >= max_requests:
                    return
                rec = {"id": f"c{seed}-{i}-{len(records)}", "delta": rng.choice(names), "text": _text(rng, words),
                       "status": None}
                records.append(rec)
            body = json.dumps({"delta": rec["delta"], "text": rec["text"], "beam": beam, "max_len": max_len})
            t0 = time.perf_counter()
            try:
                conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                conn.request("POST", "/v1/generate", body=body, headers={"Content-Type": "application/json",
                                                                              "X-Request-Id": rec["id"]})
                resp = conn.getresponse()
                payload = json.loads(resp.read() or b"{}")
                rec.update(status=resp.status, seconds=time.perf_counter() - t0)
                if resp.status == 200:
                    rec["tokens"] = payload["hypotheses"][0]["tokens"]
                elif resp.status in (429, 503):
                    time.sleep(0.05)  # a polite client waits (Retry-After says 1 s; the run is short)
                if resp.getheader("connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except ConnectionRefusedError:
                rec["status"] = "refused"  # never accepted: the server had stopped listening
                return
            except (OSError, http.client.HTTPException) as e:
                rec["status"] = f"lost: {type(e).__name__}"
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(k)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 180)
    return records


def _pct(values: List[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, max(0, int(round(q / 100 * len(values) + 0.5)) - 1))]


def _served_total(metrics: Dict[str, float]) -> float:
    return sum(v for k, v in metrics.items() if k.startswith("unifairseq_serve_requests_total{endpoint=\"generate\""))


def _summary(name: str, n: int, records: List[dict], seconds: float, metrics: Dict[str, float]) -> dict:
    ok = [r for r in records if r["status"] == 200]
    lat = [r["seconds"] for r in ok]
    bs = metrics.get("unifairseq_serve_batch_size_sum", 0) / max(1, metrics.get("unifairseq_serve_batch_size_count", 0))
    bd = (metrics.get("unifairseq_serve_batch_deltas_sum", 0)
          / max(1, metrics.get("unifairseq_serve_batch_deltas_count", 0)))
    statuses: Dict[str, int] = {}
    for r in records:
        statuses[str(r["status"])] = statuses.get(str(r["status"]), 0) + 1
    return dict(run=name, deltas=n, requests=len(records), ok=len(ok), statuses=statuses,
                throughput=len(ok) / seconds, p50=_pct(lat, 50), p95=_pct(lat, 95), p99=_pct(lat, 99),
                mean_batch=bs, deltas_per_batch=bd, server_counted=_served_total(metrics))


def _check_parity(setup: dict, records: List[dict], sample: int, beam: int, max_len: int, seed: int = 0) -> int:
    """Decode a sample of the answered requests alone, each on a hub of its own delta only; returns the
    number checked (raises on the first mismatch)."""
    import torch

    from unifairseq.fairseq.bank import load_hub

    ok = [r for r in records if r["status"] == 200]
    picked = random.Random(seed).sample(ok, min(sample, len(ok)))
    hubs = {}
    for r in picked:
        name = r["delta"]
        if name not in hubs:
            hubs[name] = load_hub(setup["base"], {name: os.path.join(setup["deltas"], name + ".pt")},
                                  data=setup["data"], bpe=None, source_lang="src", target_lang="tgt").eval()
            hubs[name].cfg.dataset.max_tokens = hubs[name].cfg.dataset.batch_size = None
        hub = hubs[name]
        hub.model.set_beam_size(beam)
        with torch.no_grad():
            alone = hub.generate([hub.encode(r["text"])], beam=beam, max_len_a=0, max_len_b=max_len,
                                 deltas=[name])[0][0]["tokens"].tolist()
        if alone != r["tokens"]:
            raise LoadTestError(f"delta {name}, {r['text']!r}: the server answered {r['tokens']}, decoding it "
                                f"alone gives {alone}")
    return len(picked)


def _lost(summary: dict, sent_ok_or_error: int) -> None:
    lost = {k: v for k, v in summary["statuses"].items() if k.startswith("lost") or k == "None"}
    if lost:
        raise LoadTestError(f"{summary['run']} N={summary['deltas']}: requests without an answer: {lost}")
    if summary["server_counted"] != sent_ok_or_error:
        raise LoadTestError(f"{summary['run']} N={summary['deltas']}: the clients had {sent_ok_or_error} answers, "
                            f"the server counted {summary['server_counted']:.0f}")


def run_mode(setup, mode, n, a) -> dict:
    names = setup["names"][:n]
    server = Server(setup, names, [*MODES[mode], "--max-wait-ms", str(a.max_wait_ms)] +
                    ([] if mode == "single" else ["--max-batch", str(a.max_batch)]), a.threads)
    try:
        t0 = time.monotonic()
        records = _clients(server.port, names, a.clients, a.seconds, a.max_requests, setup["words"], a.beam,
                           a.max_len, threading.Event())
        elapsed = time.monotonic() - t0
        summary = _summary(mode, n, records, elapsed, server.metrics())
    finally:
        code = server.stop()
    _lost(summary, sum(1 for r in records if isinstance(r["status"], int)))
    summary["checked_alone"] = _check_parity(setup, records, a.sample, a.beam, a.max_len)
    summary["exit"] = code
    return summary


def run_sigterm(setup, n, a) -> dict:
    """SIGTERM half way: answers are 200 until the drain, then 503 or refused; none lost; exit 0."""
    names = setup["names"][:n]
    server = Server(setup, names, ["--max-batch", str(a.max_batch), "--max-wait-ms", str(a.max_wait_ms)], a.threads)
    stop = threading.Event()
    timer = threading.Timer(a.seconds / 2, lambda: server.proc.send_signal(signal.SIGTERM))
    timer.start()
    t0 = time.monotonic()
    records = _clients(server.port, names, a.clients, a.seconds, a.max_requests, setup["words"], a.beam,
                       a.max_len, stop, seed=1)
    elapsed = time.monotonic() - t0
    timer.cancel()
    try:
        code = server.proc.wait(timeout=120)
        seen = server.access()
    finally:
        server.stop()
    for r in records:
        if str(r["status"]).startswith("lost") and r["id"] not in seen:
            # the connection closed as the server stopped, before the request was read: never accepted
            r["status"] = "closed before read"
    summary = _summary("sigterm mid-load", n, records, elapsed, {})
    lost = {k: v for k, v in summary["statuses"].items() if k.startswith("lost") or k == "None"}
    unanswered = [r["id"] for r in records if seen.get(r["id"]) == 200 and r["status"] != 200]
    if lost or unanswered or code != 0:
        raise LoadTestError(f"SIGTERM mid-load: exit {code}, requests without an answer: {lost or unanswered}")
    summary.update(exit=code, checked_alone=_check_parity(setup, records, a.sample, a.beam, a.max_len))
    return summary


def run_admin(setup, n, a) -> dict:
    """PUT and DELETE a delta (one not served at start) over and over while the clients run."""
    names, extra = setup["names"][:n], setup["names"][n]
    server = Server(setup, names, ["--max-batch", str(a.max_batch), "--max-wait-ms", str(a.max_wait_ms)], a.threads)
    stop, cycles, errors = threading.Event(), [0], []

    def admin():
        auth = {"Authorization": f"Bearer {TOKEN}"}
        while not stop.is_set():
            for method, want in (("PUT", 201), ("DELETE", 200)):
                c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
                c.request(method, f"/v1/deltas/{extra}", headers=auth)
                r = c.getresponse()
                if r.status != want:
                    errors.append(f"{method} {r.status} {r.read()[:200]!r}")
                c.close()
                time.sleep(0.2)
            cycles[0] += 1

    t = threading.Thread(target=admin, daemon=True)
    try:
        t0 = time.monotonic()
        t.start()
        records = _clients(server.port, names, a.clients, a.seconds, a.max_requests, setup["words"], a.beam,
                           a.max_len, threading.Event(), seed=2)
        elapsed = time.monotonic() - t0
        stop.set()
        t.join(60)
        summary = _summary("PUT/DELETE mid-load", n, records, elapsed, server.metrics())
    finally:
        stop.set()
        code = server.stop()
    if errors:
        raise LoadTestError(f"PUT/DELETE mid-load: {errors[0]}")
    _lost(summary, sum(1 for r in records if isinstance(r["status"], int)))
    summary.update(exit=code, admin_cycles=cycles[0], checked_alone=_check_parity(setup, records, a.sample, a.beam,
                                                                                  a.max_len))
    return summary


def markdown(rows: List[dict]) -> str:
    out = ["| run | N deltas | requests | answered 200 | other answers | req/s | p50 ms | p95 ms | p99 ms | "
           "mean batch | deltas/batch | checked alone |", "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        other = ", ".join(f"{k}: {v}" for k, v in sorted(r["statuses"].items()) if k != "200") or "-"
        extra = f" ({r['admin_cycles']} PUT+DELETE)" if "admin_cycles" in r else ""
        out.append(f"| {r['run']}{extra} | {r['deltas']} | {r['requests']} | {r['ok']} | {other} | "
                   f"{r['throughput']:.1f} | {1000 * r['p50']:.0f} | {1000 * r['p95']:.0f} | {1000 * r['p99']:.0f} | "
                   + (f"{r['mean_batch']:.2f} | {r['deltas_per_batch']:.2f} | " if r["mean_batch"] else "- | - | ")
                   + f"{r['checked_alone']} |")
    return "\n".join(out)


def main(argv: Optional[List[str]] = None) -> None:
    ap = cli.parser(PROG, __doc__)
    ap.add_argument("--deltas", type=int, nargs="+", default=[1, 8, 32], metavar="N")
    ap.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    ap.add_argument("--clients", type=int, default=16, metavar="K")
    ap.add_argument("--seconds", type=float, default=10.0, metavar="T", help="per run (at most 600)")
    ap.add_argument("--max-requests", type=int, default=20000, help="per run")
    ap.add_argument("--beam", type=int, default=2)
    ap.add_argument("--max-len", type=int, default=16)
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=1, help="the server's torch threads")
    ap.add_argument("--sample", type=int, default=20, help="answers per run decoded alone and compared")
    ap.add_argument("--no-events", action="store_true", help="skip the SIGTERM and PUT/DELETE mid-load runs")
    ap.add_argument("--events-deltas", type=int, default=8, metavar="N")
    ap.add_argument("--workdir", help="a folder made by a previous run (kept); default: a temporary one")
    ap.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    ap.add_argument("--markdown", action="store_true", help="print the table as markdown")
    a = ap.parse_args(argv)

    def body():
        if not 0 < a.seconds <= 600 or a.clients < 1 or min(a.deltas) < 1:
            raise LoadTestError("--seconds must be in (0, 600], --clients and --deltas at least 1")
        need = max([*a.deltas, a.events_deltas + 1])
        with tempfile.TemporaryDirectory(prefix="serve-loadtest-") as tmp:
            root = a.workdir or tmp
            setup = _setup(root, need)
            rows = []
            for n in a.deltas:
                for mode in a.modes:
                    rows.append(run_mode(setup, mode, n, a))
                    print(json.dumps(rows[-1]), file=sys.stderr)
            if not a.no_events:
                for fn in (run_sigterm, run_admin):
                    rows.append(fn(setup, a.events_deltas, a))
                    print(json.dumps(rows[-1]), file=sys.stderr)
        if a.json:
            with open(a.json, "w") as f:
                json.dump(dict(rows=rows, clients=a.clients, seconds=a.seconds, beam=a.beam, max_len=a.max_len,
                               max_batch=a.max_batch, max_wait_ms=a.max_wait_ms, shapes=setup["shapes"]), f, indent=1)
        print(markdown(rows) if a.markdown else json.dumps(rows, indent=1))
        return 0

    sys.exit(cli.run(PROG, body, errors=(LoadTestError,)))


def _setup(root: str, n: int) -> dict:
    """The tiny base and deltas under ROOT (made once; a --workdir keeps them for the next run)."""
    from unifairseq.serve import tinyset  # torch and fairseq: not at --help

    meta = os.path.join(root, "setup.json")
    if os.path.isfile(meta):
        with open(meta) as f:
            setup = json.load(f)
        if len(setup["names"]) >= n and all(re.fullmatch(r"d\d+", x) for x in setup["names"]):
            return setup
    setup = tinyset.make(root, n)
    with open(meta, "w") as f:
        json.dump(setup, f)
    return setup


if __name__ == "__main__":
    main()
