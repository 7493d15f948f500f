"""Parameter accounting for every method preset, read off real built models.

    unifairseq-count                      # bart_base shapes
    unifairseq-count --size large    # bart_large shapes (about 1 minute, ~4 GB)

Prints, per preset: trainable parameters (what the optimizer sees), the same after
`unifairseq-export` would fold the prefix MLP (trainable minus the MLP), and the
paper's formula count, each with its percentage of the frozen base.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from unifairseq import cli

# torch and fairseq are imported in the functions that build models: `unifairseq-count --help` needs neither

BART_VOCAB = 50264  # len(bart.large/dict.txt) with fairseq's 4 special symbols


def dummy_dictionary(size: int):
    from fairseq.data import Dictionary  # deferred: fairseq (see the imports above)

    d = Dictionary()
    for i in range(size - d.nspecial):
        d.add_symbol(f"w{i}")
    return d


def parse_model_args(arch: str, flags: Sequence[str] = ()) -> argparse.Namespace:
    """fairseq's own training-argument parsing, as `fairseq-train` does it."""
    from fairseq import options  # deferred: fairseq (see the imports above)

    import unifairseq.fairseq.models  # noqa: F401  (registers the architectures; deferred: fairseq)

    parser = options.get_training_parser()
    return options.parse_args_and_arch(parser, ["unused-data-dir", "--task", "translation", "--arch", arch,
                                                *flags])


def build_translation_model(arch: str, flags: Sequence[str] = (), dictionary=None):
    from fairseq.models import build_model  # deferred: fairseq (see the imports above)
    from fairseq.tasks.translation import TranslationTask

    args = parse_model_args(arch, flags)
    d = dictionary if dictionary is not None else dummy_dictionary(BART_VOCAB)
    task = TranslationTask(args, d, d)
    return build_model(args, task), task, args


def mlp_params(model) -> int:
    from unifairseq.core.methods.prefix import PrefixProvider  # deferred: torch (see the imports above)

    return sum(p.numel() for m in model.modules() if isinstance(m, PrefixProvider) and m.mid_dim > 0
               for p in m.parameters()) - sum(m.num_layers * 2 * m.length * m.dim for m in model.modules()
                                              if isinstance(m, PrefixProvider) and m.mid_dim > 0)


def main(argv=None) -> None:
    ap = cli.parser("unifairseq-count", __doc__)
    ap.add_argument("--size", choices=("base", "large"), default="base")
    cli.add_methods(ap, cli.preset_names, default=None, what="presets to count (default: all)")
    args = ap.parse_args(argv)
    import torch  # deferred: --help needs no torch

    logging.getLogger("unifairseq").setLevel(logging.WARNING)
    torch.set_grad_enabled(False)
    rows = []
    for method in args.methods or cli.preset_names():
        model, _, _ = build_translation_model(f"{method}_bart_{args.size}")
        rep = model.delta_report
        rows.append((method, rep["trainable"], rep["trainable"] - mlp_params(model), rep["formula"], rep["base"]))
        del model
    print(f"\nbart_{args.size} shapes, base = {rows[0][4]:,} frozen parameters\n")
    print(f"| method | trainable | % | inference (MLP folded) | % | paper formula | % |")
    print(f"|---|---:|---:|---:|---:|---:|---:|")
    for method, tr, inf, form, base in rows:
        print(f"| {method} | {tr:,} | {100 * tr / base:.2f} | {inf:,} | {100 * inf / base:.2f} | "
              f"{form:,} | {100 * form / base:.2f} |")


if __name__ == "__main__":
    sys.exit(main())
