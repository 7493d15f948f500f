"""unifairseq-serve on a tiny BART with five kinds of deltas: a real uvicorn server on a free loopback port
(one per module, in a thread) and a real HTTP client. The API contract, each answer equal to decoding
that request alone with its delta's own hub (under concurrent load, in mixed batches), the bad-input
table, overload answered 429, timeouts, disconnected clients, admin auth, adding and removing a delta
while requests run."""
from __future__ import annotations

import json
import logging
import re
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from servehelp import (alone_hubs, decode_alone, delta_of_another_base, free_port, make_bart, request, sentence,
                       server_args, thread_server)
from unifairseq.core.deltafile import read_delta

TOKEN = "s3cret-token"
SERVED = ["lora", "mam", "pfeiffer"]  # at start; prefix and bitfit are PUT later
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    mp = pytest.MonkeyPatch()
    mp.setenv("UNIFAIRSEQ_BASES", str(root / "bases"))
    d, data, folder = make_bart(root)
    port = free_port()
    argv = server_args(data, folder, port, *[a for n in SERVED for a in ("--delta", n)], "--admin-token", TOKEN,
                       "--max-wait-ms", "40", "--max-batch", "8", "--max-queue", "8", "--max-input-tokens", "20")
    with thread_server(argv) as state:
        yield dict(port=port, state=state, d=d, data=data, folder=folder,
                   hubs=alone_hubs(data, folder, [*SERVED, "prefix", "bitfit"]))
    mp.undo()


def gen(srv, body, **kw):
    return request(srv["port"], "POST", "/v1/generate", body, **kw)


def metric(port, name, **labels):
    text = request(port, "GET", "/metrics")[2]
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pat = re.escape(name) + (r"\{" + re.escape(want) + r"\}" if want else "") + r" (\S+)"
    m = re.search(pat, text)
    return float(m.group(1)) if m else 0.0


class Gate:
    """Holds the scheduler thread (a job run between batches) so that requests wait in the queue."""

    def __init__(self, state):
        self.event = threading.Event()
        self.fut = state.scheduler.call(self.event.wait)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.event.set()
        self.fut.result(timeout=10)


def wait_queue(srv, n):
    for _ in range(500):
        if srv["state"].scheduler.depth() >= n:
            return
        threading.Event().wait(0.01)
    raise AssertionError(f"the queue never held {n} requests")


def test_api_contract(srv, caplog):
    port = srv["port"]
    status, _, body = request(port, "GET", "/health")
    assert status == 200 and body == {"status": "ready", "family": "bart", "deltas": 3}
    status, _, listing = request(port, "GET", "/v1/deltas")
    assert status == 200 and [x["name"] for x in listing["deltas"]] == sorted(SERVED)
    for x in listing["deltas"]:
        config, tensors = read_delta(str(srv["folder"] / x["name"]))
        assert x["parameters"] == sum(t.numel() for t in tensors.values()) > 0
        assert x["base_fingerprint"] == config["base"]["fingerprint"] and x["base_fingerprint"].startswith("v2:")
    assert "prefix" in {x["name"]: x["method"] for x in listing["deltas"]}["mam"]
    with caplog.at_level(logging.INFO, logger="unifairseq.serve.access"):
        status, headers, out = gen(srv, {"delta": "mam", "text": sentence(srv["d"], 1), "beam": 3, "max_len": 6,
                                         "nbest": 2})
        for _ in range(200):  # the line is written once the response is sent
            lines = [r.getMessage() for r in caplog.records if '"/v1/generate"' in r.getMessage()]
            if lines:
                break
            threading.Event().wait(0.01)
    line = json.loads(lines[-1])
    assert status == 200 and headers["content-type"] == "application/json" and out["delta"] == "mam"
    assert len(out["hypotheses"]) == 2 and out["hypotheses"][0]["score"] >= out["hypotheses"][1]["score"]
    h = out["hypotheses"][0]
    assert h["text"] == srv["hubs"]["mam"].decode(torch.tensor(h["tokens"]))
    assert line["status"] == 200 and line["delta"] == "mam" and line["method"] == "POST" and line["ms"] > 0
    text = request(port, "GET", "/metrics")[2]
    for series in ("unifairseq_serve_queue_depth 0", "unifairseq_serve_deltas 3",
                   "# TYPE unifairseq_serve_batch_size histogram",
                   "unifairseq_serve_request_seconds_bucket{endpoint=\"generate\",le=\"+Inf\"}",
                   "unifairseq_serve_batch_deltas_count"):
        assert series in text, series
    assert metric(port, "unifairseq_serve_requests_total", endpoint="generate", delta="mam", status="200") >= 1
    text = sentence(srv["d"], 2)  # greedy after a beam search on the same model (fairseq keeps the beam size)
    assert gen(srv, {"delta": "lora", "text": text, "max_len": 6})[2]["hypotheses"][0]["tokens"] == \
        decode_alone(srv["hubs"], "lora", text, 1, 6)[0]
    assert request(port, "POST", "/v1/classify", {"text": "w1"})[0] == 404  # a BART server: no classify
    assert request(port, "GET", "/nowhere")[2]["error"]["message"] == "Not Found"


def test_each_answer_equals_decoding_it_alone_under_concurrent_load(srv):
    """24 requests from 8 concurrent clients over 3 deltas and the base: batched together (several deltas in
    a batch), and every answer the hypothesis of its own delta's hub on that sentence alone."""
    port, names = srv["port"], [*SERVED, None]
    mixed_before = metric(port, "unifairseq_serve_batch_deltas_count") - metric(
        port, "unifairseq_serve_batch_deltas_bucket", le="1")
    jobs = [(names[i % 4], sentence(srv["d"], i), 2) for i in range(24)]

    def one(job):
        delta, text, beam = job
        return gen(srv, {"delta": delta, "text": text, "beam": beam, "max_len": 6})

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, jobs))
    assert [a[0] for a in answers] == [200] * 24
    for (delta, text, beam), (_, _, out) in zip(jobs, answers):
        tokens, score = decode_alone(srv["hubs"], delta, text, beam, 6)
        assert out["hypotheses"][0]["tokens"] == tokens, (delta, text)
        assert out["hypotheses"][0]["score"] == pytest.approx(score, abs=1e-4)
    mixed = metric(port, "unifairseq_serve_batch_deltas_count") - metric(
        port, "unifairseq_serve_batch_deltas_bucket", le="1")
    assert mixed > mixed_before, "no batch held more than one delta"


LONG = " ".join(["w1"] * 40)
BAD = [  # (raw body, status, field)
    (b"{not json", 400, "body"),
    (b"[1, 2]", 422, "body"),
    (b"", 400, "body"),
    (json.dumps({"delta": "nope", "text": "w1"}).encode(), 404, "delta"),
    (json.dumps({"delta": 3, "text": "w1"}).encode(), 422, "delta"),
    (json.dumps({"text": ""}).encode(), 400, "text"),
    (json.dumps({"text": "   "}).encode(), 400, "text"),
    (json.dumps({}).encode(), 400, "text"),
    (json.dumps({"text": "w1", "tokens": [5]}).encode(), 400, "text"),
    (json.dumps({"text": LONG}).encode(), 413, "text"),
    (json.dumps({"tokens": []}).encode(), 400, "tokens"),
    (json.dumps({"tokens": [5, 9999]}).encode(), 400, "tokens"),
    (json.dumps({"tokens": [5, "6"]}).encode(), 422, "tokens[1]"),
    (json.dumps({"text": 5}).encode(), 422, "text"),
    (json.dumps({"text": "w1", "beam": 0}).encode(), 422, "beam"),
    (json.dumps({"text": "w1", "beam": 9}).encode(), 400, "beam"),
    (json.dumps({"text": "w1", "beam": "2"}).encode(), 422, "beam"),
    (json.dumps({"text": "w1", "beam": 2.5}).encode(), 422, "beam"),
    (json.dumps({"text": "w1", "max_len": 10 ** 6}).encode(), 400, "max_len"),
    (json.dumps({"text": "w1", "lenpen": "x"}).encode(), 422, "lenpen"),
    (json.dumps({"text": "w1", "beam": 2, "nbest": 3}).encode(), 400, "nbest"),
    (json.dumps({"text": "w1", "timeout_ms": 0}).encode(), 422, "timeout_ms"),
    (json.dumps({"text": "w1", "temperature": 1}).encode(), 422, "temperature"),
    (b'{"text": "' + b"w1 " * 400_000 + b'"}', 413, "body"),
]


@pytest.mark.parametrize("raw,status,field", BAD, ids=[f"{s}-{f}-{i}" for i, (_, s, f) in enumerate(BAD)])
def test_bad_input_is_a_4xx_naming_the_field(srv, raw, status, field):
    got, headers, body = gen(srv, None, raw=raw)
    assert (got, body["error"]["field"]) == (status, field), body
    assert headers["content-type"] == "application/json" and "Traceback" not in json.dumps(body)
    assert body["error"]["message"]


def test_chunked_body_over_the_limit_is_413_and_made_up_deltas_are_one_series(srv):
    import http.client

    def chunks():
        yield b'{"text": "'
        for _ in range(400):
            yield b"w1 " * 1000  # 1.2 MB in all, over the default 1 MiB, with no Content-Length
        yield b'"}'

    conn = http.client.HTTPConnection("127.0.0.1", srv["port"], timeout=60)
    conn.request("POST", "/v1/generate", body=chunks(), headers={"Content-Type": "application/json"},
                 encode_chunked=True)
    resp = conn.getresponse()
    assert (resp.status, json.loads(resp.read())["error"]["field"]) == (413, "body")
    conn.close()
    assert gen(srv, {"delta": "made-up-xyz", "text": "w1"})[0] == 404
    text = request(srv["port"], "GET", "/metrics")[2]
    assert "made-up-xyz" not in text and 'delta="(unknown)",status="404"' in text


def test_full_queue_is_answered_429_with_retry_after(srv):
    port = srv["port"]
    body = {"delta": "lora", "text": "w3 w4", "max_len": 4}
    with ThreadPoolExecutor(8) as pool:
        with Gate(srv["state"]):
            queued = [pool.submit(gen, srv, body) for _ in range(8)]
            wait_queue(srv, 8)
            status, headers, out = gen(srv, body)
            assert status == 429 and headers["retry-after"] == "1" and "queue is full" in out["error"]["message"]
        assert [f.result()[0] for f in queued] == [200] * 8, "every accepted request is answered"
    assert metric(port, "unifairseq_serve_rejected_total", reason="queue_full") >= 1


def test_deadline_and_disconnected_client_are_not_computed(srv):
    port = srv["port"]
    batches = metric(port, "unifairseq_serve_batches_total", kind="generate")
    gone = metric(port, "unifairseq_serve_dropped_total", reason="client_gone")
    with Gate(srv["state"]):
        status, _, out = gen(srv, {"delta": "mam", "text": "w1 w2", "timeout_ms": 150})
        assert status == 504 and out["error"]["field"] == "timeout_ms"
        raw = json.dumps({"delta": "lora", "text": "w5 w6"}).encode()
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n%s" % (len(raw), raw))
            wait_queue(srv, 1)
        for _ in range(300):  # the handler notices the closed connection
            if metric(port, "unifairseq_serve_dropped_total", reason="client_gone") > gone:
                break
            threading.Event().wait(0.01)
        else:
            raise AssertionError("the disconnected request was not dropped")
    assert gen(srv, {"delta": "lora", "text": "w7"})[0] == 200
    assert metric(port, "unifairseq_serve_batches_total", kind="generate") == batches + 1, \
        "only the last request was computed"


def test_admin_auth(srv):
    port = srv["port"]
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                    {"Authorization": "Bearer " + TOKEN + "x"}, {"Authorization": "Basic " + TOKEN}):
        for method in ("PUT", "DELETE"):
            status, _, out = request(port, method, "/v1/deltas/bitfit", headers=headers)
            assert (status, out["error"]["field"]) == (401, "authorization"), (method, headers)
    assert "bitfit" not in [x["name"] for x in request(port, "GET", "/v1/deltas")[2]["deltas"]]
    for name, status in (("nothere", 404), ("..", 400), ("a.b", 400), ("%2e%2e", 400)):
        assert request(port, "PUT", f"/v1/deltas/{name}", headers=AUTH)[0] == status, name
    assert request(port, "PUT", "/v1/deltas/lora", headers=AUTH)[0] == 409
    other = delta_of_another_base(srv["folder"].parent, srv["folder"], srv["d"])  # validated before visible
    status, _, out = request(port, "PUT", f"/v1/deltas/{other}", headers=AUTH)
    assert status == 422 and out["error"]["field"] == "name" and "another base" in out["error"]["message"]
    assert other not in [x["name"] for x in request(port, "GET", "/v1/deltas")[2]["deltas"]]
    assert gen(srv, {"delta": other, "text": "w1"})[0] == 404
    assert request(port, "DELETE", "/v1/deltas/nothere", headers=AUTH)[0] == 404


def test_put_and_delete_a_delta_while_requests_run(srv):
    """Clients keep decoding with lora and mam while prefix and bitfit are added (checked, then visible) and
    removed; every request is answered 200 and equals its delta's hub alone; the removed are 404."""
    port, d, stop = srv["port"], srv["d"], threading.Event()
    results = []

    def client(i):
        k = 0
        while not stop.is_set() or k < 3:
            delta, text = ("lora", "mam")[(i + k) % 2], sentence(d, i * 5 + k)
            results.append((delta, text, gen(srv, {"delta": delta, "text": text, "beam": 2, "max_len": 5})))
            k += 1

    with ThreadPoolExecutor(4) as pool:
        running = [pool.submit(client, i) for i in range(4)]
        for name in ("prefix", "bitfit"):
            status, _, info = request(port, "PUT", f"/v1/deltas/{name}", headers=AUTH)
            assert status == 201 and info["name"] == name and info["parameters"] > 0
            text = sentence(d, 11)
            status, _, out = gen(srv, {"delta": name, "text": text, "beam": 2, "max_len": 5})
            assert status == 200 and out["hypotheses"][0]["tokens"] == decode_alone(srv["hubs"], name, text, 2, 5)[0]
            status, _, out = request(port, "DELETE", f"/v1/deltas/{name}", headers=AUTH)
            assert (status, out) == (200, {"removed": name})
            assert gen(srv, {"delta": name, "text": text})[0] == 404
        stop.set()
        for f in running:
            f.result()
    assert len(results) >= 12 and {r[2][0] for r in results} == {200}
    for delta, text, (_, _, out) in results[::3]:
        assert out["hypotheses"][0]["tokens"] == decode_alone(srv["hubs"], delta, text, 2, 5)[0]
    assert sorted(x["name"] for x in request(port, "GET", "/v1/deltas")[2]["deltas"]) == sorted(SERVED)


def test_text_goes_through_the_scripts_bpe_and_sentencepiece(srv, tmp_path):
    """--bpe gpt2 (default): the packaged GPT-2 files the scripts use (data/bpe.py), nothing downloaded;
    --bpe sentencepiece (mBART): the model given. Both as the hub encodes a request's text."""
    import sentencepiece as spm

    from unifairseq.data.bpe import encode_line, get_encoder
    from unifairseq.serve.engine import Engine, ServeError

    line = "Parameter-efficient tuning serves many tasks from one frozen model."
    kw = dict(source_lang="src", target_lang="tgt")
    eng = Engine.load("tiny.bart", {}, str(srv["data"]), bpe="gpt2", **kw)
    assert eng.hub.bpe.encode(line) == encode_line(get_encoder(), line)
    d = srv["d"]
    want = [d.bos(), *d.encode_line(encode_line(get_encoder(), line), append_eos=False).tolist(), d.eos()]
    assert eng.encode(line).tolist() == want
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"{line} {i} w{i}" for i in range(50)))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "sp"), vocab_size=60)
    eng = Engine.load("tiny.bart", {}, str(srv["data"]), bpe="sentencepiece",
                      sentencepiece_model=str(tmp_path / "sp.model"), **kw)
    pieces = spm.SentencePieceProcessor(model_file=str(tmp_path / "sp.model")).encode(line, out_type=str)
    assert eng.hub.bpe.encode(line) == " ".join(pieces)
    with pytest.raises(ServeError, match="--sentencepiece-model"):
        Engine.load("tiny.bart", {}, str(srv["data"]), bpe="sentencepiece", **kw)
