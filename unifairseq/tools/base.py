"""unifairseq-base: where base models are found (core/bases.py has the search order).

    unifairseq-base find NAME_OR_PATH_OR_DELTA_DIR   the base file (stdout) and how it was found (stderr);
                                                     a delta folder: its recorded name, path, fingerprint
    unifairseq-base list                             the search path, the bases there, their fingerprints
    unifairseq-base add PATH --name NAME [--copy]    link (or copy) a base folder or file into the cache

On failure `find` prints nothing on stdout and exits non-zero. fairseq-generate needs no `find`: its
--path is the folder's model.pt, whose base the model finds (docs/sharing.md). `find DIR` also checks a
stranger's folder: its model.pt read weights-only and compared with the safetensors (tools/share.py).
"""
from __future__ import annotations

import os
import shutil
import sys

from unifairseq import cli


# The imports inside this module's functions are deliberate: unifairseq.core and unifairseq.fairseq import
# torch (and fairseq), which `unifairseq-base --help` must not load (tests/test_help_fast.py).
def _fp(path: str, *version: str) -> str:
    from unifairseq.fairseq.checkpoint_io import file_content_fingerprint  # torch + fairseq: only to read a file

    return file_content_fingerprint(path, *version)  # a version: what an older delta recorded (v1)


def find(target: str) -> int:
    from unifairseq.core import bases  # torch: not at --help
    from unifairseq.core.deltafile import is_delta_folder, read_config  # torch: not at --help

    # what checkpoint_io.find_base does, with its weights-only fingerprint (_fp) imported only when a file
    # is read: a JSON error or a lookup by name needs no fairseq
    if is_delta_folder(target):
        config = read_config(target)
        if "entry" in config:  # before anything is said about its base: the entry is what --path reads
            from unifairseq.tools.share import check_entry  # fairseq: only for a folder with an entry

            check_entry(target, config)
        rec = config["base"]
        found = bases.resolve(None, rec["name"], rec["fingerprint"], rec["path_hint"], _fp)
    else:
        found = bases.resolve(target, fingerprint_file=_fp, option="unifairseq-base find PATH")
    print(found.path)
    print(f"unifairseq-base: found {found.how}", file=sys.stderr)
    return 0


def list_bases() -> int:
    from unifairseq.core import bases  # torch: not at --help

    print("search path (in order):")
    for folder, where in bases.search_folders():
        print(f"  {folder}  [{where}{'' if os.path.isdir(folder) else ', missing'}]")
    index = bases.FingerprintIndex(_fp)
    rows = list(bases.candidates())
    print(f"bases ({len(rows)}):" if rows else "no bases found (unifairseq-base add PATH --name NAME)")
    for name, path, where in rows:
        fp = index.get_or_warn(path)  # a damaged entry: one warning, the others still listed
        print(f"  {name:20s} {fp[:16] if fp else '(unreadable)':16s}  {path}")
    index.save()
    return 0


def add(path: str, name: str, do_copy: bool) -> int:
    """Validate first (a valid name, a readable fairseq checkpoint loaded weights-only, not a delta),
    then link or copy under a temporary name and rename: a failure leaves nothing in the cache."""
    from unifairseq.core import bases  # torch: not at --help
    # torch + fairseq: not at --help
    from unifairseq.fairseq.checkpoint_io import BASE_PATH_KEY, FINGERPRINT_KEY, DeltaCheckpointError, load_checkpoint_file

    bases.check_name(name, "a base name (--name)")
    src = bases.as_path(path)
    if src is None:
        raise ValueError(f"{path!r} is neither a checkpoint file nor a folder holding {bases.BASE_FILE}")
    sd = load_checkpoint_file(src)["model"]
    if FINGERPRINT_KEY in sd or BASE_PATH_KEY in sd:  # what only delta-only (and bank) checkpoints record
        raise DeltaCheckpointError(f"{src!r} is a delta (or bank) checkpoint, not a base model; add the full "
                                   "pretrained checkpoint it was trained on")
    fp = bases.content_fingerprint(sd)
    root = os.path.join(bases.cache_dir(), "bases")
    dest = os.path.join(root, name)
    if os.path.lexists(dest):
        raise ValueError(f"{dest} exists; pick another --name or remove it")
    os.makedirs(root, exist_ok=True)
    tmp = os.path.join(root, f".{name}.adding.{os.getpid()}")  # a hidden name: never taken for a base
    try:
        if os.path.basename(src) == bases.BASE_FILE:  # the whole folder (dict.txt, BPE files travel with it)
            folder = os.path.dirname(src)
            shutil.copytree(folder, tmp) if do_copy else os.symlink(folder, tmp, target_is_directory=True)
        else:  # a single checkpoint file: a folder holding it as model.pt
            os.makedirs(tmp)
            target = os.path.join(tmp, bases.BASE_FILE)
            shutil.copy2(src, target) if do_copy else os.symlink(src, target)
        if os.path.lexists(dest):
            raise ValueError(f"{dest} appeared while adding; pick another --name or remove it")
        os.rename(tmp, dest)
    finally:
        if os.path.lexists(tmp):
            shutil.rmtree(tmp) if os.path.isdir(tmp) and not os.path.islink(tmp) else os.remove(tmp)
    print(f"{'copied' if do_copy else 'linked'} {src} as base {name!r}: {os.path.join(dest, bases.BASE_FILE)} "
          f"(fingerprint {fp[:16]})")
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
    from unifairseq.core.bases import BaseNotFound  # torch: after parse_args, so not at --help
    from unifairseq.core.deltafile import DeltaFileError  # torch: after parse_args, so not at --help

    try:
        if a.cmd == "find":
            return find(a.target)
        if a.cmd == "list":
            return list_bases()
        return add(a.path, a.name, a.copy)
    except (BaseNotFound, DeltaFileError, ValueError, OSError, RuntimeError) as e:
        # fairseq is imported only when a checkpoint is read (a JSON error needs none of it)
        ckpt_io = sys.modules.get("unifairseq.fairseq.checkpoint_io")
        if isinstance(e, RuntimeError) and not (ckpt_io and isinstance(e, ckpt_io.DeltaCheckpointError)):
            raise
        return cli.error("unifairseq-base", e)


if __name__ == "__main__":
    sys.exit(main())
