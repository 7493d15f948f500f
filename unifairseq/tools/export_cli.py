"""unifairseq-export: turn a training checkpoint into what inference needs.

    unifairseq-export inference CKPT OUT   small delta for inference and sharing: no optimizer state, the
                                           prefix reparametrization MLP folded into static vectors. OUT a
                                           folder: delta_config.json + delta_model.safetensors (nothing
                                           to unpickle; docs/sharing.md); OUT ending in .pt: a fairseq file
    unifairseq-export merge CKPT OUT       LoRA, DoRA, (IA)³ (and BitFit) merged into the base weights: a
                                           plain fairseq checkpoint that vanilla fairseq loads, no --user-dir;
                                           a trained classification head travels with it
    unifairseq-export unmerge MERGED CKPT OUT   the merge taken back out: the base again
    unifairseq-export hf CKPT OUT [--peft]     Hugging Face transformers / peft folders (tools/export_hf.py)
    merge / hf on a bank checkpoint (unifairseq-bank build, --arch bank_*) take one of its deltas: --delta NAME
"""
from __future__ import annotations

import logging
import os
import sys

from unifairseq import cli

# The parser is built here, without torch or fairseq: `unifairseq-export --help` imports neither. The
# commands themselves (tools/export.py, tools/export_hf.py) are imported once the arguments are parsed.


def _add_bank_pick(p) -> None:
    p.add_argument("--delta", metavar="NAME", help="CKPT a delta bank: the delta to export (a merge is of one delta)")
    p.add_argument("--data", help="with --delta: fairseq-preprocess output with the base's dictionaries "
                                  "(default: the bank's)")


def _add_hf_parser(sub) -> None:
    p = sub.add_parser("hf", help="Hugging Face transformers folder (base, merged delta) or peft adapter")
    p.add_argument("ckpt"), p.add_argument("out")
    p.add_argument("--base", help="base name or checkpoint of a delta (default: the delta's record)")
    p.add_argument("--base-only", action="store_true", help="export the delta's base model only")
    p.add_argument("--peft", action="store_true", help="LoRA/DoRA/(IA)³: OUT/base + OUT/adapter (peft) instead of merging")
    p.add_argument("--adapters", action="store_true",
                   help="pa_ffn / scaled_pa on BART: OUT/base + OUT/adapter in AdapterHub adapters' format (for a "
                        "transformers 4.57 + adapters 1.3.0 environment)")
    p.add_argument("--peft-base-name", help="adapter_config.json base_model_name_or_path (default: OUT/base)")
    p.add_argument("--head", help="classification head to export (default: the only one)")
    p.add_argument("--hf-vocab", help="HF folder the base was imported from: its vocabulary order and tokenizer files")
    p.add_argument("--dict", dest="dict_path", help="the fairseq dictionary (default: dict.txt beside the base)")
    p.add_argument("--bpe-dir", help="fairseq GPT-2 BPE files (encoder.json, vocab.bpe) -> vocab.json + merges.txt")


def _is_bank(state: dict) -> bool:
    """A bank checkpoint (unifairseq-bank build, --arch bank_*): one of its deltas is picked with --delta."""
    args = state.get("args") or (state.get("cfg") or {}).get("model")
    arch = args.get("arch") if isinstance(args, dict) else getattr(args, "arch", None)
    return str(arch or "").startswith("bank_")


def main(argv=None) -> int:
    ap = cli.parser("unifairseq-export", __doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("inference", help="small delta for inference: a shareable folder, or OUT.pt "
                                         "(prefix MLP folded, no optimizer)")
    p.add_argument("ckpt"), p.add_argument("out")
    p.add_argument("--base", help="base name or checkpoint, for a delta that records no base content fingerprint "
                                  "(made before unifairseq recorded it)")
    p.add_argument("--source-dict", help="the task's source dict.txt, for a delta that records no dictionary")
    p.add_argument("--target-dict", help="the task's target dict.txt (default: the source one)")
    p = sub.add_parser("merge", help="merge LoRA/DoRA/(IA)³/BitFit into the base: a plain fairseq checkpoint")
    p.add_argument("ckpt"), p.add_argument("out")
    p.add_argument("--base", help="base name or checkpoint (default: the delta's record, by the search order of "
                                  "docs/sharing.md)")
    _add_bank_pick(p)
    p = sub.add_parser("unmerge", help="take a merged delta back out of a merged checkpoint")
    p.add_argument("merged"), p.add_argument("ckpt"), p.add_argument("out")
    _add_hf_parser(sub)
    _add_bank_pick(sub.choices["hf"])
    for p in sub.choices.values():
        p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    a = ap.parse_args(argv)

    logging.basicConfig(format="%(levelname)s | %(name)s | %(message)s", level=logging.INFO)
    # deferred to here: torch and fairseq, which --help and a usage error do not need
    import tempfile

    import unifairseq.fairseq
    from unifairseq.core.bank import BankError
    from unifairseq.core.deltafile import DeltaFileError
    from unifairseq.tools.bank_build import one_delta
    from unifairseq.fairseq.checkpoint_io import DeltaCheckpointError, load_checkpoint_file
    from unifairseq.tools import export, export_hf

    unifairseq.fairseq.register()  # architecture names, safe globals
    try:
        src = a.ckpt  # read once, here or by the exporter: tools/export.LoadedDelta
        if a.cmd in ("merge", "hf"):
            if a.delta is None and os.path.isfile(a.ckpt):  # a .pt: read here, then handed on as read
                src = export.LoadedDelta(a.ckpt, load_checkpoint_file(a.ckpt), a.base)
            if a.delta is not None or (isinstance(src, export.LoadedDelta) and _is_bank(src.state)):
                picked = tempfile.TemporaryDirectory(prefix="unifairseq-export-")
                src = a.ckpt = one_delta(a.ckpt, a.delta, picked.name, f"export {a.cmd}", a.data, a.base)
        if a.cmd == "inference":
            dicts = {k: v for k, v in (("source", a.source_dict), ("target", a.target_dict)) if v}
            export.export_inference(src, a.out, a.force, a.base, dicts)
        elif a.cmd == "merge":
            export.export_merge(src, a.out, a.base, a.force)
        elif a.cmd == "hf":
            export_hf.run(a, src)
        else:
            export.export_unmerge(a.merged, src, a.out, a.force)
    except (DeltaCheckpointError, DeltaFileError, export_hf.HFExportError, BankError) as e:
        return cli.error("unifairseq-export", e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
