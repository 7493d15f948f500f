"""unifairseq-serve on a tiny RoBERTa: POST /v1/classify answers the labels and probabilities of the delta's
own head, equal to that delta's hub predicting the sentence alone; concurrent requests are batched;
/v1/generate and a head the delta lacks are 4xx naming the field."""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from fairseq.data import Dictionary

from ckpthelp import trained_roberta_lora
from servehelp import free_port, request, thread_server
from tiny import HEAD
from unifairseq.fairseq.bank import load_hub
from unifairseq.tools.export import export_inference


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve_roberta")
    _, task, _, base, delta, data = trained_roberta_lora(root, "roberta.tiny")
    (root / "deltas").mkdir()
    export_inference(str(delta), str(root / "deltas" / "sst"))
    labels = Dictionary()  # named labels: the answer's label is the head's class through this dictionary
    for name in ("negative", "positive"):
        labels.add_symbol(name)
    labels.save(str(root / "labels.txt"))
    port = free_port()
    argv = ["--base", str(base), "--data", str(data / "input0"), "--bpe", "none", "--delta-dir", str(root / "deltas"),
            "--all-deltas", "--label-dict", str(root / "labels.txt"), "--port", str(port), "--max-wait-ms", "40"]
    ref = load_hub(str(base), {"sst": str(root / "deltas" / "sst")}, data=str(data / "input0"), bpe=None).eval()
    with thread_server(argv) as state:
        yield dict(port=port, state=state, d=task.source_dictionary, ref=ref)


def test_classify_equals_the_delta_alone(srv):
    d, port = srv["d"], srv["port"]
    assert request(port, "GET", "/health")[2]["family"] == "roberta"
    listing = request(port, "GET", "/v1/deltas")[2]["deltas"]
    assert [(x["name"], x["heads"]) for x in listing] == [("sst", {HEAD: 2})]
    inputs = [[d.bos(), *[5 + (i * 3 + j) % 30 for j in range(2 + i % 5)], d.eos()] for i in range(12)]
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda t: request(port, "POST", "/v1/classify", {"delta": "sst", "tokens": t}),
                                inputs))
    for tokens, (status, _, out) in zip(inputs, answers):
        assert status == 200 and out["head"] == HEAD and set(out["probabilities"]) == {"negative", "positive"}
        with torch.no_grad():
            want = srv["ref"].predict(HEAD, torch.tensor(tokens), deltas=["sst"])[0].exp().tolist()
        assert [out["probabilities"][k] for k in ("negative", "positive")] == pytest.approx(want, abs=1e-5)
        assert out["label"] == ("negative" if want[0] >= want[1] else "positive")
        assert math.isclose(sum(out["probabilities"].values()), 1.0, abs_tol=1e-5)
    text = request(port, "GET", "/metrics")[2]
    assert 'unifairseq_serve_batches_total{kind="classify"}' in text


def test_classify_refusals(srv):
    port = srv["port"]
    for body, status, field in (({"text": "w1 w2"}, 400, "head"),  # the plain base has no head
                                ({"delta": "sst", "tokens": [5, 6], "head": "other"}, 400, "head"),
                                ({"delta": "sst", "tokens": [5, 6], "head": 3}, 422, "head"),
                                ({"delta": "mnli", "tokens": [5, 6]}, 404, "delta")):
        got, _, out = request(port, "POST", "/v1/classify", body)
        assert (got, out["error"]["field"]) == (status, field), out
    assert request(port, "POST", "/v1/generate", {"tokens": [5, 6]})[0] == 404
