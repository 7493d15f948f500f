"""Helpers of the experiment scripts (scripts/preprocess_*.sh, train_*.sh, eval_*.sh).

    unifairseq-pipeline xsum-raw   --raw DIR --out DIR [--select-size 1600]
    unifairseq-pipeline glue-tsv   --task MNLI --train F --dev F --out DIR
    unifairseq-pipeline spm-train  --inputs F [F ...] --model-prefix P --vocab-size N
    unifairseq-pipeline spm-encode --model M --inputs F [F ...] --outputs F [F ...] [--max-pieces N]
    unifairseq-pipeline gpus       [--gpus N]
    unifairseq-pipeline batch-plan --total B --batch-size b --gpus G
    unifairseq-pipeline meta       FILE KEY
    unifairseq-pipeline meta-set   FILE KEY=VALUE [KEY=VALUE ...]
    unifairseq-pipeline binarize   FAIRSEQ-PREPROCESS-ARGS [:: FAIRSEQ-PREPROCESS-ARGS ...]

Each subcommand does one small, testable step; the bash scripts chain them with fairseq's own
command lines. Errors are one line on stderr and exit status 2. The data steps (xsum-raw, glue-tsv,
spm-*, binarize) are unifairseq/data/prepare.py; this file holds the GPU count, the batch plan,
meta.json and the command line.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from typing import Optional, Sequence, Tuple
from unifairseq import cli
from unifairseq.data.prepare import GLUE_TASKS, PipelineError, binarize, glue_tsv, spm_encode, spm_train, xsum_raw


# ------------------------------------------------------------------ GPUs and batches
def count_gpus(environ=None) -> int:
    """GPUs this process would use: CUDA_VISIBLE_DEVICES when set, else `nvidia-smi -L`, else 0."""
    env = os.environ if environ is None else environ
    cvd = env.get("CUDA_VISIBLE_DEVICES")
    if cvd is not None:
        ids = [x.strip() for x in cvd.split(",") if x.strip()]
        if not ids or ids[0].startswith("-"):  # "" or "-1": no GPU
            return 0
        return len(ids)
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return 0
    if out.returncode != 0:
        return 0
    return sum(1 for l in out.stdout.splitlines() if l.startswith("GPU "))


def batch_plan(total: int, per_gpu: int, gpus: int) -> Tuple[int, int]:
    """(update_freq, per-GPU batch) with per_gpu' * max(gpus, 1) * update_freq == total exactly.

    The per-GPU batch is at most `per_gpu` (memory); the update frequency is the smallest that
    reaches `total`, and the per-GPU batch is then `total / (gpus * update_freq)`."""
    if total <= 0 or per_gpu <= 0:
        raise PipelineError(f"batch sizes must be positive (total {total}, per GPU {per_gpu})")
    g = max(gpus, 1)
    uf = max(1, math.ceil(total / (per_gpu * g)))
    while uf <= total:
        if total % (g * uf) == 0:
            return uf, total // (g * uf)
        uf += 1
    raise PipelineError(f"the effective batch {total} cannot be split over {g} GPUs")


def read_meta(path: str, key: str) -> str:
    if not os.path.isfile(path):
        raise PipelineError(f"{path!r} does not exist: run the preprocessing script first "
                            "(or point --data at its output directory)")
    with open(path, encoding="utf-8") as f:
        meta = json.load(f)
    if key not in meta:
        raise PipelineError(f"{path}: no {key!r} entry")
    value = meta[key]
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)


# ------------------------------------------------------------------ CLI
def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = cli.parser("unifairseq-pipeline", __doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("xsum-raw", help="raw XSum (source/target or JSON lines) -> one example per line")
    p.add_argument("--raw", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--select-size", type=int, default=1600)
    p.add_argument("--meta", default=None, help="write the counts into this JSON file")
    p = sub.add_parser("glue-tsv", help="GLUE TSV -> input0/input1/label text files")
    p.add_argument("--task", required=True, choices=sorted(GLUE_TASKS))
    p.add_argument("--train", required=True)
    p.add_argument("--dev", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--max-train", type=int, default=0)
    p.add_argument("--meta", default=None)
    p = sub.add_parser("spm-train")
    p.add_argument("--inputs", nargs="+", required=True)
    p.add_argument("--model-prefix", required=True)
    p.add_argument("--vocab-size", type=int, required=True)
    p = sub.add_parser("spm-encode")
    p.add_argument("--model", required=True)
    p.add_argument("--inputs", nargs="+", required=True)
    p.add_argument("--outputs", nargs="+", required=True)
    p.add_argument("--max-pieces", type=int, default=0)
    p = sub.add_parser("gpus", help="print the number of GPUs (CUDA_VISIBLE_DEVICES, else nvidia-smi -L)")
    p.add_argument("--gpus", type=int, default=None, help="override")
    p = sub.add_parser("batch-plan", help="print 'UPDATE_FREQ PER_GPU_BATCH'")
    p.add_argument("--total", type=int, required=True)
    p.add_argument("--batch-size", dest="per_gpu", type=int, required=True, help="at most this many per GPU per step")
    p.add_argument("--gpus", type=int, required=True)
    p = sub.add_parser("meta", help="print one entry of a meta.json")
    p.add_argument("file")
    p.add_argument("key")
    p = sub.add_parser("meta-set", help="set entries KEY=VALUE of a meta.json (VALUE parsed as JSON if it can be)")
    p.add_argument("file")
    p.add_argument("items", nargs="+", metavar="KEY=VALUE")
    sub.add_parser("binarize", help="fairseq-preprocess ARGS [:: ARGS ...] in one process")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["binarize"]:  # everything after it belongs to fairseq-preprocess
        jobs, cur = [], []
        for tok in argv[1:]:
            if tok == "::":
                jobs.append(cur)
                cur = []
            else:
                cur.append(tok)
        jobs.append(cur)
        binarize([j for j in jobs if j])
        return 0
    a = ap.parse_args(argv)
    try:
        if a.cmd == "xsum-raw":
            counts = xsum_raw(a.raw, a.out, a.select_size)
            if a.meta:
                _update_meta(a.meta, {"examples": counts})
        elif a.cmd == "glue-tsv":
            meta = glue_tsv(a.task, a.train, a.dev, a.out, a.max_train)
            if a.meta:
                _update_meta(a.meta, meta)
        elif a.cmd == "spm-train":
            print(spm_train(a.inputs, a.model_prefix, a.vocab_size))
        elif a.cmd == "spm-encode":
            for dst, n in zip(a.outputs, spm_encode(a.model, a.inputs, a.outputs, a.max_pieces)):
                print(f"spm-encode: {n} lines -> {dst}", file=sys.stderr)
        elif a.cmd == "gpus":
            print(a.gpus if a.gpus is not None else count_gpus())
        elif a.cmd == "batch-plan":
            print(*batch_plan(a.total, a.per_gpu, a.gpus))
        elif a.cmd == "meta":
            print(read_meta(a.file, a.key))
        elif a.cmd == "meta-set":
            values = {}
            for item in a.items:
                key, sep, value = item.partition("=")
                if not sep:
                    raise PipelineError(f"{item!r} is not KEY=VALUE")
                try:
                    values[key] = json.loads(value)
                except json.JSONDecodeError:
                    values[key] = value
            _update_meta(a.file, values)
    except PipelineError as e:
        cli.error(f"unifairseq-pipeline {a.cmd}", e)
        return 2
    return 0


def _update_meta(path: str, values: dict) -> None:
    meta = {}
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    meta.update(values)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    sys.exit(main())
