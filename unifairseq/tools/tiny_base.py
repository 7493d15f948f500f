"""Tiny, randomly initialised *plain* base checkpoints for the pipelines' --tiny mode.

    unifairseq-tiny-base bart    DATA_BIN OUT_PT --source-lang source --target-lang target
    unifairseq-tiny-base mbart   DATA_BIN OUT_PT --source-lang en_XX --target-lang ro_RO --langs ar_AR,...
    unifairseq-tiny-base roberta DATA_BIN/input0 OUT_PT

Each stands in for the released checkpoint of the paper's base model and has its layout
(`checkpoint_state`): `bart` is fairseq's `bart_large` architecture for the
translation task (as bart.large), `mbart` is `mbart_large` with mbart.cc25's pre-LN layers and
embedding layer norm for `translation_from_pretrained_bart` (whose dictionary gains the `[xx_YY]`
language symbols and `<mask>`, as mbart.cc25's does), `roberta` is `roberta_base` for
`masked_lm` (LM head, no classification head, as roberta.base). Sizes are shrunk by flags
(default: 2 layers per stack, dim 64, FFN 128, 4 heads); the training scripts pass the same sizes
to fairseq-train.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import List, Optional, Sequence
from unifairseq import cli
from unifairseq.errors import UnifairseqError


logger = logging.getLogger("unifairseq.tools.tiny_base")


class TinyBaseError(UnifairseqError, RuntimeError):
    pass


def model_flags(layers: int, dim: int, ffn_dim: int, heads: int) -> list:
    return ["--encoder-layers", str(layers), "--decoder-layers", str(layers),
            "--encoder-embed-dim", str(dim), "--decoder-embed-dim", str(dim),
            "--encoder-ffn-embed-dim", str(ffn_dim), "--decoder-ffn-embed-dim", str(ffn_dim),
            "--encoder-attention-heads", str(heads), "--decoder-attention-heads", str(heads)]


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


def fairseq_args(kind: str, data: str, layers: int, dim: int, ffn_dim: int, heads: int, seed: int,
                 source_lang: Optional[str], target_lang: Optional[str], langs: Optional[str],
                 max_positions: int, arch: Optional[str] = None) -> List[str]:
    if kind == "bart":
        return [data, "--task", "translation", "--arch", arch or "bart_large", "--source-lang", source_lang,
                "--target-lang", target_lang, *model_flags(layers, dim, ffn_dim, heads)]
    if kind == "mbart":
        if not langs:
            raise TinyBaseError("mbart needs --langs (mbart.cc25's comma-separated language codes)")
        return [data, "--task", "translation_from_pretrained_bart", "--arch", "mbart_large", "--langs", langs,
                "--source-lang", source_lang, "--target-lang", target_lang, "--encoder-normalize-before",
                "--decoder-normalize-before", "--layernorm-embedding", *model_flags(layers, dim, ffn_dim, heads)]
    if kind == "roberta":
        return [data, "--task", "masked_lm", "--arch", "roberta_base", "--tokens-per-sample", str(max_positions),
                "--max-positions", str(max_positions), "--encoder-layers", str(layers), "--encoder-embed-dim",
                str(dim), "--encoder-ffn-embed-dim", str(ffn_dim), "--encoder-attention-heads", str(heads)]
    raise TinyBaseError(f"unknown kind {kind!r}; choose bart, mbart or roberta")


def build(kind: str, data: str, layers: int = 2, dim: int = 64, ffn_dim: int = 128, heads: int = 4,
          seed: int = 0, source_lang: Optional[str] = None, target_lang: Optional[str] = None,
          langs: Optional[str] = None, max_positions: int = 512, embed_std: Optional[float] = None,
          arch: Optional[str] = None):
    """(model, args) of a plain fairseq model of that kind over DATA's dictionary: the one factory of
    tiny bases (make_tiny_bart and the pipelines' --tiny mode use it). `arch` overrides BART's
    architecture (default bart_large, the layout of bart.large)."""
    if not os.path.isdir(data):
        raise TinyBaseError(f"{data!r} is not a directory (a fairseq-preprocess output)")
    if kind == "roberta":
        if not os.path.isfile(os.path.join(data, "dict.txt")):
            raise TinyBaseError(f"no dict.txt in {data!r}: give the input0/ folder of the binarized GLUE data")
    else:
        for lang in (source_lang, target_lang):
            if not lang:
                raise TinyBaseError(f"{kind} needs --source-lang and --target-lang")
            if not os.path.isfile(os.path.join(data, f"dict.{lang}.txt")):
                raise TinyBaseError(f"no dict.{lang}.txt in {data!r}")
    if dim % heads:
        raise TinyBaseError(f"--dim {dim} is not divisible by --heads {heads}")

    import torch
    from fairseq import options, tasks

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [
        *fairseq_args(kind, data, layers, dim, ffn_dim, heads, seed, source_lang, target_lang, langs, max_positions,
                      arch),
        "--seed", str(seed), "--cpu"])
    task = tasks.setup_task(args)
    torch.manual_seed(seed)
    model = task.build_model(args)
    if embed_std is not None:
        embs = []
        if kind == "roberta":
            embs.append(model.encoder.sentence_encoder.embed_tokens)
        else:
            embs.extend([model.encoder.embed_tokens, model.decoder.embed_tokens])
        tables = {id(e.weight): e for e in embs}
        with torch.no_grad():
            for emb in tables.values():
                emb.weight.normal_(0.0, embed_std)
                emb.weight[emb.padding_idx].zero_()
    return model, args


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = cli.parser("unifairseq-tiny-base", __doc__)
    ap.add_argument("kind", choices=("bart", "mbart", "roberta"))
    ap.add_argument("data", metavar="DATA", help="fairseq-preprocess output (GLUE: its input0/ folder)")
    ap.add_argument("out_pt", metavar="OUT_PT")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--ffn-dim", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--source-lang")
    ap.add_argument("--target-lang")
    ap.add_argument("--langs")
    ap.add_argument("--max-positions", type=int, default=512, help="roberta: positions (default 512)")
    ap.add_argument("--embed-std", type=float, default=None,
                    help="std of the token embeddings (default: fairseq's 0.02); see make_tiny_bart --help")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(levelname)s | %(name)s | %(message)s")
    try:
        model, args = build(a.kind, a.data, a.layers, a.dim, a.ffn_dim, a.heads, a.seed, a.source_lang,
                            a.target_lang, a.langs, a.max_positions, a.embed_std)
    except TinyBaseError as e:
        return cli.error("unifairseq-tiny-base", e)
    from fairseq import checkpoint_utils

    os.makedirs(os.path.dirname(os.path.abspath(a.out_pt)), exist_ok=True)
    checkpoint_utils.torch_persistent_save(checkpoint_state(model, args), a.out_pt)
    n = sum(p.numel() for p in model.parameters())
    logger.info(f"wrote {a.out_pt}: plain {args.arch} ({a.layers} layers, dim {a.dim}, ffn {a.ffn_dim}, "
                f"{a.heads} heads, {n} parameters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
