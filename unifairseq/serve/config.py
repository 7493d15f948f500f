"""unifairseq-serve's options: one base, its deltas, the scheduling limits, the request limits, the admin
token. Torch-free: --help imports nothing heavy."""
from __future__ import annotations

import argparse
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from unifairseq import cli
from unifairseq.errors import UnifairseqError

TOKEN_ENV = "UNIFAIRSEQ_SERVE_ADMIN_TOKEN"
PROG = "unifairseq-serve"

DOC = """Serve one base and many deltas over HTTP; requests for any deltas are batched together.

  unifairseq-serve --base bart.base --data DICT_DIR --delta-dir deltas/ --delta sum --delta mt=mt.pt

  POST /v1/generate  {"delta": "sum", "text": "...", "beam": 4, "max_len": 64}   (BART, mBART)
  POST /v1/classify  {"delta": "sst2", "text": "..."}                            (RoBERTa)
  GET  /v1/deltas    GET /health    GET /metrics (Prometheus)
  PUT|DELETE /v1/deltas/NAME   (Authorization: Bearer TOKEN; NAME from a --delta-dir folder)

docs/serving.md describes the API, the scheduling and the metrics."""


class ConfigError(UnifairseqError):
    pass


@dataclass
class Settings:
    base: str
    deltas: Dict[str, Optional[str]] = field(default_factory=OrderedDict)  # name -> path (None: in a delta dir)
    delta_dirs: List[str] = field(default_factory=list)
    data: Optional[str] = None
    label_dict: Optional[str] = None
    bpe: str = "gpt2"
    encoder_json: Optional[str] = None
    vocab_bpe: Optional[str] = None
    sentencepiece_model: Optional[str] = None
    source_lang: Optional[str] = None
    target_lang: Optional[str] = None
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 16
    max_tokens: int = 4096
    max_wait_ms: float = 5.0
    max_queue: int = 256
    scheduling: str = "mixed"
    request_timeout_s: float = 30.0
    max_request_bytes: int = 1 << 20
    max_input_tokens: int = 512
    max_beam: int = 8
    max_len: int = 256
    admin_token: Optional[str] = None
    drain_timeout_s: float = 60.0
    threads: int = 1

    def overrides(self) -> dict:
        out = {k: v for k, v in (("source_lang", self.source_lang), ("target_lang", self.target_lang),
                                 ("gpt2_encoder_json", self.encoder_json), ("gpt2_vocab_bpe", self.vocab_bpe),
                                 ("sentencepiece_model", self.sentencepiece_model))
               if v is not None}
        return out


def parser() -> argparse.ArgumentParser:
    ap = cli.parser(PROG, DOC)
    m = ap.add_argument_group("model")
    m.add_argument("--base", required=True, metavar="NAME_OR_PATH",
                   help="the base model: a name (unifairseq-base, $UNIFAIRSEQ_BASES) or a model.pt path")
    m.add_argument("--delta", action="append", default=[], metavar="NAME[=PATH]",
                   help="a delta to serve (repeat): NAME=PATH (a delta .pt or folder), or NAME alone, found as "
                        "NAME/ or NAME.pt in a --delta-dir")
    m.add_argument("--delta-dir", action="append", default=[], metavar="DIR",
                   help="a folder of deltas (repeat); PUT /v1/deltas/NAME takes deltas only from these folders")
    m.add_argument("--all-deltas", action="store_true", help="serve every delta found in the --delta-dir folders")
    m.add_argument("--data", metavar="DIR", help="the dictionaries' folder (default: the base's folder)")
    m.add_argument("--bpe", choices=("gpt2", "sentencepiece", "none"), default="gpt2",
                   help="text encoding: the GPT-2 BPE the scripts use (default; BART, RoBERTa), sentencepiece "
                        "(mBART, with --sentencepiece-model), or none (text is the dictionary's symbols)")
    m.add_argument("--sentencepiece-model", metavar="FILE", help="mBART: the base's sentence.bpe.model")
    m.add_argument("--encoder-json", help="GPT-2 BPE encoder.json (default: the packaged one)")
    m.add_argument("--vocab-bpe", help="GPT-2 BPE vocab.bpe (default: the packaged one)")
    m.add_argument("--label-dict", metavar="FILE", help="RoBERTa: the label dictionary (default: "
                   "DATA/../label/dict.txt when it exists; else labels are class indices)")
    m.add_argument("--source-lang", help="translation task source language (the dictionary's dict.LANG.txt)")
    m.add_argument("--target-lang", help="translation task target language")
    n = ap.add_argument_group("network")
    n.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, loopback only)")
    n.add_argument("--port", type=int, default=8000)
    s = ap.add_argument_group("scheduling")
    s.add_argument("--max-batch", type=int, default=16, metavar="N", help="requests per batch (1: one at a time)")
    s.add_argument("--max-tokens", type=int, default=4096, metavar="N",
                   help="padded source tokens per batch (requests x longest)")
    s.add_argument("--max-wait-ms", type=float, default=5.0, metavar="MS",
                   help="how long the oldest request waits for a batch to fill")
    s.add_argument("--max-queue", type=int, default=256, metavar="N",
                   help="requests waiting at most; beyond it 429 with Retry-After")
    s.add_argument("--scheduling", choices=("mixed", "one-delta"), default="mixed",
                   help="mixed: a batch holds any deltas (default); one-delta: one delta per batch")
    s.add_argument("--threads", type=int, default=1, metavar="N",
                   help="torch CPU threads of the model (default 1; 0: torch's default). More pay off only for "
                        "large models on cores nobody else uses: on a busy machine intra-op threads that wait for "
                        "each other made small batches 20x slower (docs/serving.md)")
    r = ap.add_argument_group("limits")
    r.add_argument("--request-timeout-s", type=float, default=30.0, help="a request's deadline (504 after it)")
    r.add_argument("--max-request-bytes", type=int, default=1 << 20, help="request body size (413 beyond it)")
    r.add_argument("--max-input-tokens", type=int, default=512, help="tokens of one input (413 beyond it)")
    r.add_argument("--max-beam", type=int, default=8)
    r.add_argument("--max-len", type=int, default=256, help="largest max_len a request may ask")
    r.add_argument("--drain-timeout-s", type=float, default=60.0,
                   help="on SIGTERM, how long accepted requests may take before the server exits anyway")
    a = ap.add_argument_group("admin")
    a.add_argument("--admin-token", help=f"the token PUT/DELETE /v1/deltas need (or ${TOKEN_ENV}); without one "
                                         "those endpoints are off")
    return ap


def settings_from(args: argparse.Namespace) -> Settings:
    deltas: Dict[str, Optional[str]] = OrderedDict()
    for d in args.delta_dir:
        if not os.path.isdir(d):
            raise ConfigError(f"--delta-dir {d!r} is not a folder; give a folder of delta folders or .pt files")
    if args.all_deltas:
        for d in args.delta_dir:
            for entry in sorted(os.listdir(d)):
                name = entry[:-3] if entry.endswith(".pt") else entry
                if entry.endswith(".pt") or os.path.isdir(os.path.join(d, entry)):
                    deltas.setdefault(name, os.path.join(d, entry))
    for item in args.delta:
        name, eq, path = item.partition("=")
        if not name or (eq and not path):
            raise ConfigError(f"--delta {item!r}: give NAME=PATH or NAME (found in a --delta-dir)")
        if name in deltas and not args.all_deltas:
            raise ConfigError(f"--delta {name!r} is given twice; give each delta one name")
        if path and not os.path.exists(path):
            raise ConfigError(f"--delta {item!r}: {path!r} does not exist")
        if not path and not args.delta_dir:
            raise ConfigError(f"--delta {name!r} has no path and no --delta-dir was given; give NAME=PATH")
        deltas[name] = path or None
    for flag, v, lo in (("--max-batch", args.max_batch, 1), ("--max-tokens", args.max_tokens, 1),
                        ("--max-queue", args.max_queue, 1), ("--max-beam", args.max_beam, 1),
                        ("--max-len", args.max_len, 1), ("--max-input-tokens", args.max_input_tokens, 1),
                        ("--port", args.port, 0)):
        if v < lo:
            raise ConfigError(f"{flag} {v}: give at least {lo}")
    token = args.admin_token or os.environ.get(TOKEN_ENV) or None
    return Settings(base=args.base, deltas=deltas, delta_dirs=list(args.delta_dir), data=args.data,
                    label_dict=args.label_dict, bpe=args.bpe,
                    encoder_json=args.encoder_json, vocab_bpe=args.vocab_bpe,
                    sentencepiece_model=args.sentencepiece_model, source_lang=args.source_lang,
                    target_lang=args.target_lang, host=args.host, port=args.port, max_batch=args.max_batch,
                    max_tokens=args.max_tokens, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
                    scheduling=args.scheduling, request_timeout_s=args.request_timeout_s,
                    max_request_bytes=args.max_request_bytes, max_input_tokens=args.max_input_tokens,
                    max_beam=args.max_beam, max_len=args.max_len, admin_token=token,
                    drain_timeout_s=args.drain_timeout_s, threads=args.threads)
