"""unifairseq-base: where base models are found (core/bases.py has the search order).

    unifairseq-base find NAME_OR_PATH_OR_DELTA_DIR   the base file (stdout) and how it was found (stderr);
                                                     a delta folder: its recorded name, path, fingerprint
    unifairseq-base list                             the search path, the bases there, their fingerprints
    unifairseq-base add PATH --name NAME [--copy]    link (or copy) a base folder or file into the cache

`--path "$(unifairseq-base find DELTA_DIR)"` gives fairseq-generate the delta's own base.
"""
from __future__ import annotations

import os
import shutil
import sys

from unifairseq import cli


def _fp(path: str, *version: str) -> str:
    from unifairseq.fairseq.checkpoint import file_content_fingerprint

    return file_content_fingerprint(path, *version)  # a version: what an older delta recorded (v1)


def find(target: str) -> int:
    from unifairseq.core import bases
    from unifairseq.core.deltafile import is_delta_folder, read_config

    if is_delta_folder(target):
        rec = read_config(target)["base"]
        found = bases.resolve(None, rec["name"], rec["fingerprint"], rec["path_hint"], _fp)
    else:
        found = bases.resolve(target)
    print(found.path)
    print(f"unifairseq-base: found {found.how}", file=sys.stderr)
    return 0


def list_bases() -> int:
    from unifairseq.core import bases

    print("search path (in order):")
    for folder, where in bases.search_folders():
        print(f"  {folder}  [{where}{'' if os.path.isdir(folder) else ', missing'}]")
    index = bases.FingerprintIndex(_fp)
    rows = list(bases.candidates())
    print(f"bases ({len(rows)}):" if rows else "no bases found (unifairseq-base add PATH --name NAME)")
    for name, path, where in rows:
        print(f"  {name:20s} {index.get(path)[:16]}  {path}")
    index.save()
    return 0


def add(path: str, name: str, do_copy: bool) -> int:
    from unifairseq.core import bases

    if os.sep in name or name in ("", ".", ".."):
        raise ValueError(f"--name {name!r}: a base name is one folder name, e.g. bart.large")
    src = bases.as_path(path)
    if src is None:
        raise ValueError(f"{path!r} is neither a checkpoint file nor a folder holding {bases.BASE_FILE}")
    dest = os.path.join(bases.cache_dir(), "bases", name)
    if os.path.lexists(dest):
        raise ValueError(f"{dest} exists; pick another --name or remove it")
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    folder = os.path.dirname(src)
    if os.path.basename(src) == bases.BASE_FILE:  # the whole folder (dict.txt, BPE files travel with it)
        shutil.copytree(folder, dest) if do_copy else os.symlink(folder, dest, target_is_directory=True)
    else:  # a single checkpoint file: a folder holding it as model.pt
        os.makedirs(dest)
        target = os.path.join(dest, bases.BASE_FILE)
        shutil.copy2(src, target) if do_copy else os.symlink(src, target)
    print(f"{'copied' if do_copy else 'linked'} {src} as base {name!r}: {os.path.join(dest, bases.BASE_FILE)} "
          f"(fingerprint {_fp(os.path.join(dest, bases.BASE_FILE))[:16]})")
    return 0


def main(argv=None) -> int:
    ap = cli.parser("unifairseq-base", __doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("find", help="the base file a name, path or delta folder resolves to").add_argument("target")
    sub.add_parser("list", help="search path, bases found, fingerprints")
    p = sub.add_parser("add", help="link or copy a base into the cache under a name")
    p.add_argument("path"), p.add_argument("--name", required=True)
    p.add_argument("--copy", action="store_true", help="copy instead of linking")
    a = ap.parse_args(argv)
    from unifairseq.core.bases import BaseNotFound
    from unifairseq.core.deltafile import DeltaFileError

    try:
        if a.cmd == "find":
            return find(a.target)
        if a.cmd == "list":
            return list_bases()
        return add(a.path, a.name, a.copy)
    except (BaseNotFound, DeltaFileError, ValueError, OSError, RuntimeError) as e:
        # fairseq is imported only when a checkpoint is read (a JSON error needs none of it)
        ckpt = sys.modules.get("unifairseq.fairseq.checkpoint")
        if isinstance(e, RuntimeError) and not (ckpt and isinstance(e, ckpt.DeltaCheckpointError)):
            raise
        return cli.error("unifairseq-base", e)


if __name__ == "__main__":
    sys.exit(main())
