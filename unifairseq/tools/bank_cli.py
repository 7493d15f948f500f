"""unifairseq-bank: build a bank checkpoint, or extract one delta of it (fairseq/tasks/bank.py and
fairseq/bank_export.py are the library).

The parser is built here, without torch or fairseq, so that `unifairseq-bank --help` imports neither;
the bank modules (which import fairseq) are imported once the arguments are parsed, in `run`.
"""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="unifairseq-bank",
                                 description="build: a bank checkpoint from a base and delta files or folders, for "
                                             "fairseq-generate/-interactive --task delta_bank --path OUT; "
                                             "extract: one delta of a bank checkpoint as a single-delta checkpoint")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("out", metavar="OUT.pt")
    b.add_argument("deltas", nargs="+", metavar="NAME=DELTA", help="a delta .pt file or a shared delta folder")
    b.add_argument("--base", required=True, help="the plain base the deltas were trained on: a name or a checkpoint")
    b.add_argument("--data", required=True, help="fairseq-preprocess output with the base's dictionaries")
    b.add_argument("--source-lang")
    b.add_argument("--target-lang")
    b.add_argument("--force", action="store_true", help="replace OUT if it exists")
    x = sub.add_parser("extract", help="one delta of a bank checkpoint as a single-delta checkpoint")
    x.add_argument("bank", metavar="BANK.pt")
    x.add_argument("name", metavar="NAME")
    x.add_argument("out", metavar="OUT.pt")
    x.add_argument("--data", help="fairseq-preprocess output with the base's dictionaries (default: the bank's)")
    x.add_argument("--base", help="the bank's base, a name or a checkpoint (default: the path the bank records)")
    x.add_argument("--force", action="store_true", help="replace OUT if it exists")
    return run(ap.parse_args(argv))


def run(a) -> int:
    # here, after parsing: fairseq and torch, which --help does not need (see above)
    from unifairseq.fairseq import register
    from unifairseq.fairseq.bank_export import extract
    from unifairseq.fairseq.tasks.bank import BankTaskError, build_bank_checkpoint

    register()
    try:
        if a.cmd == "extract":
            arch = extract(a.bank, a.name, a.out, a.data, a.base, a.force)
            print(f"wrote {a.out}: delta {a.name!r} of {a.bank} as a single-delta {arch} checkpoint")
            return 0
        deltas = {}
        for item in a.deltas:
            name, eq, path = item.partition("=")
            if not eq or not name or not path:
                raise BankTaskError(f"{item!r} is not NAME=DELTA (a delta .pt file or folder)")
            deltas[name] = path
        names = build_bank_checkpoint(a.base, deltas, a.data, a.out, a.source_lang, a.target_lang, a.force)
    except (BankTaskError, ValueError, RuntimeError, OSError) as e:
        print(f"bank build: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {a.out}: a bank of {len(names)} deltas ({', '.join(names)}) over {a.base}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
