"""Write a tiny, randomly initialised *plain* BART checkpoint in the official fairseq format.

    unifairseq-make-tiny-bart DATA_BIN OUT_PT [--layers 2 --dim 64 --ffn-dim 128 --heads 4]

The model is fairseq's own `bart_base` architecture (no deltas) with its sizes shrunk,
built for the translation task over the joined dictionary `DATA_BIN/dict.{src}.txt`.
The file has the layout of the released `bart.large/model.pt`:

    {"args": argparse.Namespace, "model": state_dict, "optimizer_history": [{...no optimizer state...}],
     "extra_state": {}, "last_optimizer_state": None}

so it stands in for a pretrained BART in `fairseq-train --restore-file OUT_PT --arch mam_bart_base
--encoder-layers L --encoder-embed-dim D ...` (the same sizes must be given there). It is
written atomically (fairseq's `checkpoint_utils.torch_persistent_save`).
"""
from __future__ import annotations

import argparse
import glob
import logging
import os
import sys
from typing import Optional, Sequence
from unifairseq import cli
from unifairseq.errors import UnifairseqError
from unifairseq.tools.tiny_base import TinyBaseError, build, checkpoint_state

logger = logging.getLogger("unifairseq.tools.make_tiny_bart")


class ToolError(UnifairseqError, RuntimeError):
    """A user error, reported as one line without a traceback."""


def infer_langs(data_bin: str, source_lang: Optional[str], target_lang: Optional[str]):
    """Languages from the flags, else from the `DATA_BIN/dict.*.txt` files fairseq-preprocess wrote."""
    if source_lang and target_lang:
        return source_lang, target_lang
    dicts = sorted(os.path.basename(p)[len("dict."):-len(".txt")]
                   for p in glob.glob(os.path.join(data_bin, "dict.*.txt")))
    if not dicts:
        raise ToolError(f"no dictionary in {data_bin!r}: expected DATA_BIN/dict.<lang>.txt as written by "
                        "`fairseq-preprocess --joined-dictionary`; run it first (or check the path)")
    if len(dicts) != 2 and not (source_lang or target_lang):
        raise ToolError(f"cannot tell the language pair from {', '.join('dict.%s.txt' % d for d in dicts)} "
                        f"in {data_bin!r}; give --source-lang and --target-lang")
    src = source_lang or next(d for d in dicts if d != target_lang)
    tgt = target_lang or next((d for d in dicts if d != src), src)
    return src, tgt


def build_tiny_bart(data_bin: str, layers: int = 2, dim: int = 64, ffn_dim: int = 128, heads: int = 4,
                    seed: int = 0, source_lang: Optional[str] = None, target_lang: Optional[str] = None,
                    embed_std: Optional[float] = None):
    """Returns (model, args): fairseq's plain BARTModel (arch bart_base, sizes overridden), built by
    the one tiny-base factory (unifairseq.tools.tiny_base.build) over DATA_BIN's joined dictionary.

    embed_std: redraw the (shared) token embeddings from normal(0, embed_std), padding row zero.
    None keeps fairseq's init_bert_params (std 0.02).
    """
    if not os.path.isdir(data_bin):
        raise ToolError(f"DATA_BIN {data_bin!r} is not a directory; run `fairseq-preprocess "
                        "--joined-dictionary --destdir DATA_BIN ...` first")
    src, tgt = infer_langs(data_bin, source_lang, target_lang)
    src_path, tgt_path = (os.path.join(data_bin, f"dict.{lang}.txt") for lang in (src, tgt))
    if not os.path.isfile(src_path):
        raise ToolError(f"missing dictionary {src_path!r}: DATA_BIN must hold the joined dictionary written by "
                        "`fairseq-preprocess --joined-dictionary`")
    if os.path.isfile(tgt_path) and tgt_path != src_path and open(src_path).read() != open(tgt_path).read():
        raise ToolError(f"{src_path} and {tgt_path} differ: BART shares all embeddings, so the data must be "
                        "binarised with `fairseq-preprocess --joined-dictionary`")
    if dim % heads:
        raise ToolError(f"--dim {dim} is not divisible by --heads {heads}")

    try:
        return build("bart", data_bin, layers, dim, ffn_dim, heads, seed, src, tgt if os.path.isfile(tgt_path) else src,
                     embed_std=embed_std, arch="bart_base")
    except TinyBaseError as e:
        raise ToolError(str(e)) from None


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    ap = cli.parser("unifairseq-make-tiny-bart", __doc__)
    ap.add_argument("data_bin", metavar="DATA_BIN", help="fairseq-preprocess output dir holding dict.<lang>.txt")
    ap.add_argument("out_pt", metavar="OUT_PT", help="checkpoint file to write (e.g. tiny_bart.pt)")
    ap.add_argument("--layers", type=int, default=2, help="encoder and decoder layers (default 2)")
    ap.add_argument("--dim", type=int, default=64, help="embedding / model dimension (default 64)")
    ap.add_argument("--ffn-dim", type=int, default=128, help="FFN inner dimension (default 128)")
    ap.add_argument("--heads", type=int, default=4, help="attention heads (default 4)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random initialisation (default 0)")
    ap.add_argument("--embed-std", type=float, default=None,
                    help="std of the shared token embeddings (default: fairseq's BERT init, 0.02). With tied "
                         "output embeddings and a post-LN decoder, the logits of a random model span about "
                         "embed_std*dim: 0.02 with dim 64 keeps every output distribution near uniform, "
                         "whatever the deltas do; the demo uses a larger value so that training shows")
    ap.add_argument("--source-lang", default=None, help="default: inferred from DATA_BIN/dict.*.txt")
    ap.add_argument("--target-lang", default=None, help="default: inferred from DATA_BIN/dict.*.txt")
    args = ap.parse_args(argv)
    for name in ("layers", "dim", "ffn_dim", "heads", "embed_std"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            ap.error(f"--{name.replace('_', '-')} must be positive")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    a = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(levelname)s | %(name)s | %(message)s")
    try:
        model, args = build_tiny_bart(a.data_bin, a.layers, a.dim, a.ffn_dim, a.heads, a.seed,
                                      a.source_lang, a.target_lang, a.embed_std)
    except ToolError as e:
        return cli.error("unifairseq-make-tiny-bart", e)
    from fairseq import checkpoint_utils

    out_dir = os.path.dirname(os.path.abspath(a.out_pt))
    os.makedirs(out_dir, exist_ok=True)
    checkpoint_utils.torch_persistent_save(checkpoint_state(model, args), a.out_pt)
    n = sum(p.numel() for p in model.parameters())
    logger.info(f"wrote {a.out_pt}: plain bart_base-family BART ({args.source_lang}->{args.target_lang}, "
                f"{a.layers} layers, dim {a.dim}, ffn {a.ffn_dim}, {a.heads} heads, vocab "
                f"{len(model.encoder.dictionary)}, {n} parameters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
