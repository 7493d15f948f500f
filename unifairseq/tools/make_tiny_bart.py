"""Write a tiny, randomly initialised *plain* BART checkpoint in the official fairseq format.

    python -m unifairseq.tools.make_tiny_bart DATA_BIN OUT_PT [--layers 2 --dim 64 --ffn-dim 128 --heads 4]

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

logger = logging.getLogger("unifairseq.tools.make_tiny_bart")


class ToolError(RuntimeError):
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


def model_flags(layers: int, dim: int, ffn_dim: int, heads: int) -> list:
    return ["--encoder-layers", str(layers), "--decoder-layers", str(layers),
            "--encoder-embed-dim", str(dim), "--decoder-embed-dim", str(dim),
            "--encoder-ffn-embed-dim", str(ffn_dim), "--decoder-ffn-embed-dim", str(ffn_dim),
            "--encoder-attention-heads", str(heads), "--decoder-attention-heads", str(heads)]


def build_tiny_bart(data_bin: str, layers: int = 2, dim: int = 64, ffn_dim: int = 128, heads: int = 4,
                    seed: int = 0, source_lang: Optional[str] = None, target_lang: Optional[str] = None,
                    embed_std: Optional[float] = None):
    """Returns (model, args): fairseq's plain BARTModel (arch bart_base, sizes overridden).

    embed_std: redraw the (shared) token embeddings from normal(0, embed_std), padding row zero.
    None keeps fairseq's init_bert_params (std 0.02).
    """
    if not os.path.isdir(data_bin):
        raise ToolError(f"DATA_BIN {data_bin!r} is not a directory; run `fairseq-preprocess "
                        "--joined-dictionary --destdir DATA_BIN ...` first")
    src, tgt = infer_langs(data_bin, source_lang, target_lang)
    src_path = os.path.join(data_bin, f"dict.{src}.txt")
    if not os.path.isfile(src_path):
        raise ToolError(f"missing dictionary {src_path!r}: DATA_BIN must hold the joined dictionary written by "
                        "`fairseq-preprocess --joined-dictionary`")
    if dim % heads:
        raise ToolError(f"--dim {dim} is not divisible by --heads {heads}")

    import torch
    from fairseq import options
    from fairseq.data import Dictionary
    from fairseq.models import build_model
    from fairseq.tasks.translation import TranslationTask

    src_dict = Dictionary.load(src_path)
    tgt_path = os.path.join(data_bin, f"dict.{tgt}.txt")
    tgt_dict = Dictionary.load(tgt_path) if os.path.isfile(tgt_path) else src_dict
    if tgt_dict != src_dict:
        raise ToolError(f"{src_path} and {tgt_path} differ: BART shares all embeddings, so the data must be "
                        "binarised with `fairseq-preprocess --joined-dictionary`")

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [
        data_bin, "--task", "translation", "--arch", "bart_base", "--source-lang", src, "--target-lang", tgt,
        "--seed", str(seed), "--cpu", *model_flags(layers, dim, ffn_dim, heads)])
    task = TranslationTask(args, src_dict, tgt_dict)
    torch.manual_seed(seed)
    model = build_model(args, task)
    if embed_std is not None:
        # bart_base shares encoder/decoder input and output embeddings: one matrix to redraw
        tables = {id(e.weight): e for e in (model.encoder.embed_tokens, model.decoder.embed_tokens)}
        with torch.no_grad():
            for emb in tables.values():
                emb.weight.normal_(0.0, embed_std)
                emb.weight[emb.padding_idx].zero_()
    return model, args


def checkpoint_state(model, args) -> dict:
    """The layout of the released bart.large/model.pt.

    `optimizer_history` holds one entry without optimizer state (what fairseq itself writes
    always has at least one): fairseq 0.12's loader (`checkpoint_utils._upgrade_state_dict`)
    reads `state["optimizer_history"][-1]` unconditionally, so an empty list makes
    `fairseq-train --restore-file` fail with IndexError.
    """
    history = [{"criterion_name": "CrossEntropyCriterion", "optimizer_name": "FairseqAdam",
                "lr_scheduler_state": {"best": None}, "num_updates": 0}]
    return {"args": args, "model": model.state_dict(), "optimizer_history": history, "extra_state": {},
            "last_optimizer_state": None}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m unifairseq.tools.make_tiny_bart", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
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
        print(f"make_tiny_bart: error: {e}", file=sys.stderr)
        return 2
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
