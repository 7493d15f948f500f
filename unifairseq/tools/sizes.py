"""Checkpoint sizes on real model shapes: what fairseq would write for the whole model, the delta
checkpoint that resumes training, and the exported inference file.

    unifairseq-sizes                       # mam, lora_attn, lora_ffn on bart_base shapes
    unifairseq-sizes --size large --methods mam

One real training update is run (so the optimizer state exists), then fairseq's trainer writes
the checkpoints exactly as fairseq-train does.
"""
from __future__ import annotations

import logging
import sys
import os
import tempfile

from unifairseq import cli
from unifairseq.tools.count import BART_VOCAB, dummy_dictionary, parse_model_args


def measure(method: str, size: str, workdir: str) -> dict:
    # deferred: torch and fairseq, which `unifairseq-sizes --help` does not need
    import torch
    from fairseq.data import LanguagePairDataset
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.tasks.translation import TranslationTask
    from fairseq.trainer import Trainer

    from unifairseq.tools.export import export_inference  # torch and fairseq, as the imports above

    d = dummy_dictionary(BART_VOCAB)
    args = parse_model_args(f"{method}_bart_{size}", ["--cpu", "--optimizer", "adam", "--lr", "1e-4",
                                                     "--max-tokens", "512"])
    cfg = convert_namespace_to_omegaconf(args)
    task = TranslationTask(cfg.task, d, d)
    model = task.build_model(cfg.model)
    trainer = Trainer(cfg, task, model, task.build_criterion(cfg.criterion))
    g = torch.Generator().manual_seed(0)
    src = [torch.randint(4, len(d), (16,), generator=g) for _ in range(2)]
    ds = LanguagePairDataset(src, [16, 16], d, src, [16, 16], d)
    trainer.train_step([ds.collater([ds[0], ds[1]])])
    trainer.consolidate_optimizer()
    out = {}
    for kind, delta_only in (("full", False), ("delta", True)):
        model.save_delta_only = delta_only
        path = os.path.join(workdir, f"{method}_{kind}.pt")
        trainer.save_checkpoint(path, {})
        out[kind] = os.path.getsize(path)
    exp = os.path.join(workdir, f"{method}_inference.pt")
    export_inference(os.path.join(workdir, f"{method}_delta.pt"), exp, force=True)
    out["inference"] = os.path.getsize(exp)
    out["trainable"] = model.delta_report["trainable"]
    for f in os.listdir(workdir):
        os.remove(os.path.join(workdir, f))
    return out


def main(argv=None):
    ap = cli.parser("unifairseq-sizes", __doc__)
    ap.add_argument("--size", choices=("base", "large"), default="base")
    cli.add_methods(ap, cli.preset_names, default=["mam", "lora_attn", "lora_ffn"])
    a = ap.parse_args(argv)
    logging.getLogger("fairseq").setLevel(logging.WARNING)
    logging.getLogger("unifairseq").setLevel(logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for m in a.methods:
            rows.append((m, measure(m, a.size, work)))
    print(f"\nbart_{a.size} shapes (vocabulary {BART_VOCAB:,}), bytes on disk\n")
    print("| method | trainable | full checkpoint (fairseq default) | delta checkpoint (resume) | "
          "exported inference |")
    print("|---|---:|---:|---:|---:|")
    for m, r in rows:
        print(f"| {m} | {r['trainable']:,} | {r['full']:,} | {r['delta']:,} | {r['inference']:,} |")


if __name__ == "__main__":
    sys.exit(main())
