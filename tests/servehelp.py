"""What the serve tests share: a tiny BART base with trained delta folders (a base found by name under
$UNIFAIRSEQ_BASES), a real unifairseq-serve (uvicorn on a free loopback port, in a thread or a
subprocess) and a real HTTP client (http.client), and each delta's own hub for the decode-alone reference."""
from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time

import torch

import unifairseq.fairseq.models  # noqa: F401  (registers the architectures ARCH_PARENT names)

from ckpthelp import save_plain_base
from tiny import perturb_deltas, tiny_dict
from trainhelp import make_trainer, toy_sample
from unifairseq.tools.export import export_inference

SMALL = ["--attn-bn", "5", "--ffn-bn", "6", "--mid-dim", "16"]
# one delta of each kind a batch must mix: LoRA, the MAM adapter, a Pfeiffer adapter, prefixes, BitFit
DELTAS = [("lora", "lora_attn_bart_base", SMALL), ("mam", "mam_bart_base", SMALL),
          ("pfeiffer", "pfeiffer_bart_base", SMALL), ("prefix", "prefix_bart_base", SMALL),
          ("bitfit", "bitfit_bart_base", [])]
KW = dict(bpe=None, source_lang="src", target_lang="tgt")


def make_bart(root, deltas=DELTAS, steps=1):
    """ROOT/bases/tiny.bart/model.pt (a plain base), ROOT/deltas/TAG/ (exported delta folders trained a
    step on that base), ROOT/data (dictionaries). Returns (dictionary, data folder, deltas folder)."""
    d = tiny_dict()
    base = root / "bases" / "tiny.bart" / "model.pt"
    save_plain_base(base, "lora_attn_bart_base", d, "args")
    out = root / "deltas"
    for i, (tag, arch, flags) in enumerate(deltas):
        trainer, model = make_trainer(arch, flags, d)
        model.load_base(str(base))
        perturb_deltas(model, seed=i)
        for _ in range(steps):
            trainer.train_step([toy_sample(d)])
        trainer.consolidate_optimizer()
        ckpt = root / f"{tag}.pt"
        trainer.save_checkpoint(str(ckpt), {})
        export_inference(str(ckpt), str(out / tag))
    data = root / "data"
    data.mkdir()
    for lang in ("src", "tgt"):
        d.save(str(data / f"dict.{lang}.txt"))
    return d, data, out


def delta_of_another_base(root, folder, d, name="otherbase"):
    """FOLDER/NAME.pt: a LoRA delta trained on a base of other weights (seed 1) than tiny.bart."""
    other = root / "otherbase" / "model.pt"
    save_plain_base(other, "lora_attn_bart_base", d, "args", seed=1)
    trainer, model = make_trainer("lora_attn_bart_base", SMALL, d)
    model.load_base(str(other))
    trainer.train_step([toy_sample(d)])
    trainer.consolidate_optimizer()
    trainer.save_checkpoint(str(folder / f"{name}.pt"), {})
    return name


def sentence(d, i, n=None):
    n = n or 3 + i % 4
    return " ".join(f"w{(i * 7 + j) % 40}" for j in range(n))


def alone_hubs(data, folder, names):
    """Each delta's own hub on the same base (by name), and the plain base's: the decode-alone reference."""
    from unifairseq.fairseq.bank import load_hub

    hubs = {n: load_hub("tiny.bart", {n: str(folder / n)}, data=str(data), **KW).eval() for n in names}
    hubs[None] = load_hub("tiny.bart", {}, data=str(data), **KW).eval()
    for h in hubs.values():
        h.cfg.dataset.max_tokens = h.cfg.dataset.batch_size = None
    return hubs


def decode_alone(hubs, delta, text, beam, max_len, lenpen=1.0):
    hub = hubs[delta]
    hub.model.set_beam_size(beam)  # as the server does (engine.generate): fairseq skips it for beam 1
    with torch.no_grad():
        hyps = hub.generate([hub.encode(text)], beam=beam, max_len_a=0, max_len_b=max_len, lenpen=lenpen,
                            deltas=[delta])[0]
    return hyps[0]["tokens"].tolist(), float(hyps[0]["score"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port, method, path, body=None, headers=None, raw=None, timeout=60):
    """(status, headers, parsed JSON or text) from a real HTTP request on loopback."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        h = {"Content-Type": "application/json", **(headers or {})}
        conn.request(method, path, body=data, headers=h)
        resp = conn.getresponse()
        text = resp.read().decode()
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = text
        return resp.status, dict(resp.getheaders()), parsed
    finally:
        conn.close()


def wait_ready(port, proc=None, timeout=120):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the server exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
        try:
            if request(port, "GET", "/health", timeout=2)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError("the server did not become ready")


def server_args(data, folder, port, *extra):
    return ["--base", "tiny.bart", "--data", str(data), "--bpe", "none", "--source-lang", "src",
            "--target-lang", "tgt", "--delta-dir", str(folder), "--port", str(port), *extra]


@contextlib.contextmanager
def thread_server(argv):
    """unifairseq-serve's app on uvicorn in a thread of this process (one per test module)."""
    import uvicorn

    from unifairseq.serve.app import create_app
    from unifairseq.serve.cli import loader
    from unifairseq.serve.config import parser, settings_from

    # --threads 0: the server in this process leaves torch's thread count (the other tests') as it is
    settings = settings_from(parser().parse_args([*argv, "--threads", "0"]))
    app = create_app(settings, loader(settings))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=settings.port, access_log=False,
                                           log_config=None, log_level="warning", lifespan="on"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    try:
        wait_ready(settings.port)
        yield app.state
    finally:
        server.should_exit = True
        t.join(timeout=30)


@contextlib.contextmanager
def subprocess_server(argv, env=None):
    """unifairseq-serve as its own process (what SIGTERM is sent to); stderr is its JSON log."""
    proc = subprocess.Popen([sys.executable, "-m", "unifairseq.serve.cli", *argv], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True, env={**os.environ, **(env or {})})
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
