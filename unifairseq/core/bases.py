"""Base models found by name, verified by fingerprint.

A delta records its base by name (bart.large, roberta.base, ... or any folder name) and by a content
fingerprint of the base's tensors. A base is looked up in this order:

  1. the flag: `--delta-base NAME_OR_PATH` (fairseq-train, unifairseq-export), the hub's `base=` argument,
     `unifairseq-base find NAME_OR_PATH`; a path (a file, or a folder holding model.pt) is taken as is
  2. $UNIFAIRSEQ_BASES: folders separated by os.pathsep, each holding <name>/model.pt
  3. the cache: ${UNIFAIRSEQ_CACHE:-${XDG_CACHE_HOME:-~/.cache}/unifairseq}/bases/<name>/model.pt
     (`unifairseq-base add PATH --name NAME` puts a base there)
  4. the path recorded when the delta was trained
  5. by content: every */model.pt under the folders of 2 and 3 whose fingerprint is the delta's
     (so a base folder that was moved or renamed is still found); fingerprints are cached per
     (path, size, mtime) in <cache>/bases-index.json so a scan rereads only files that changed

The official fairseq bases keep their release names: bart.base, bart.large, mbart.large.cc25,
roberta.base, roberta.large. Nothing is ever downloaded. The content fingerprint is the sha256 of the
base's own tensors (names, shapes, dtypes, every byte of the values: "v2:<hex>"; older deltas recorded a
sampled "v1" digest, still verified with that function) as stored in the file: it does not depend on
the method a delta trains (BitFit's plan fingerprint skips the biases it trains; this one does not).
torch only; reading a file's tensors is the caller's (`fingerprint_file`), so this module never loads
a checkpoint itself: every tool calls the one lookup, unifairseq.fairseq.checkpoint_io.find_base, which
reads files through the weights-only loader.

A base name is one folder name: letters, digits, `.`, `_`, `-`, not starting with `.` (so never `.`,
`..`, `...`, a hidden or temporary entry, a path or a control character). A name a delta records is
checked the same way: a stranger's delta folder cannot point the lookup outside the search folders.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch

from unifairseq.core.modules import is_delta_name
from unifairseq.errors import UnifairseqError

OFFICIAL = ("bart.base", "bart.large", "mbart.large.cc25", "roberta.base", "roberta.large")
BASE_FILE = "model.pt"
INDEX_NAME = "bases-index.json"


logger = logging.getLogger("unifairseq.bases")
NAME_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


class BaseNotFound(UnifairseqError, LookupError):
    """No base matched; the message lists the names and places tried and how to add one."""


class BadBaseName(BaseNotFound, ValueError):
    """A base name that is not one plain folder name."""


def valid_name(name) -> bool:
    return isinstance(name, str) and NAME_RE.fullmatch(name) is not None


def check_name(name: str, what: str = "a base name") -> str:
    if not valid_name(name):
        raise BadBaseName(f"{name!r} is not {what}: a base name is one folder name of letters, digits, '.', '_' "
                          "and '-', not starting with '.' (e.g. bart.large)")
    return name


@dataclass
class Found:
    path: str  # the base checkpoint file
    how: str  # which step of the search order found it


def sampled_digest(state: Dict[str, torch.Tensor], skip) -> str:
    """sha256 over the tensors of `state` whose names `skip` does not exclude, in name order: names,
    shapes, dtypes and up to 4,096 values of each, spread over the tensor. The plan fingerprint of `.pt`
    deltas and the version-1 content fingerprint: kept to verify what older deltas recorded (it misses
    changes between the sampled values, so new content fingerprints are `full_digest`)."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name]
        if not torch.is_tensor(t) or skip(name):
            continue
        flat = t.detach().reshape(-1)
        step = max(1, flat.numel() // 4096)
        sample = flat[::step][:4096].to(torch.float64).cpu()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(sample.numpy().tobytes())
    return h.hexdigest()


def _raw_bytes(t: torch.Tensor):
    """The tensor's bytes as a buffer (no copy for a contiguous CPU tensor; bf16 and bool included)."""
    flat = t.detach().reshape(-1)
    if flat.device.type != "cpu":
        flat = flat.cpu()
    return flat.contiguous().view(torch.uint8).numpy()


CHUNK = 1 << 24  # 16 MiB: the unit hashed on its own, so the cores share the work


def full_digest(state: Dict[str, torch.Tensor], skip) -> str:
    """sha256 over every byte of the tensors `skip` does not exclude (names, shapes, dtypes, values), in
    name order: any change of a value changes it. Each 16 MiB chunk is hashed on its own, in threads
    (hashlib releases the GIL), and the result is the sha256 of the names, shapes, dtypes and the chunk
    digests in order -- a hash tree, as collision-resistant as sha256 (cost: docs/benchmarks.md)."""
    items = [(name, state[name]) for name in sorted(state) if torch.is_tensor(state[name]) and not skip(name)]
    bufs = [_raw_bytes(t) for _, t in items]
    jobs = [(i, off) for i, b in enumerate(bufs) for off in range(0, max(len(b), 1), CHUNK)]

    def work(job):
        i, off = job
        return hashlib.sha256(bufs[i][off:off + CHUNK]).digest()

    workers = min(8, os.cpu_count() or 1)
    if workers > 1 and len(jobs) > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(workers) as pool:
            digests = list(pool.map(work, jobs))
    else:
        digests = [work(j) for j in jobs]
    h = hashlib.sha256()
    k = 0
    for i, (name, t) in enumerate(items):
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|{len(bufs[i])}\n".encode())
        n = max(1, -(-len(bufs[i]) // CHUNK))
        h.update(b"".join(digests[k:k + n]))
        k += n
    return h.hexdigest()


def _not_base(name: str) -> bool:
    """Not the base checkpoint's own tensors: deltas, task heads, version and unifairseq entries."""
    return (is_delta_name(name) or name.startswith("classification_heads.") or name.endswith("version")
            or name.startswith("unifairseq_meta."))


CONTENT_VERSION = "v2"  # content fingerprints are "v2:<sha256 of every byte>"; v1 (bare hex) was sampled
_HEX = set("0123456789abcdef")


def fingerprint_version(fp: str) -> str:
    return CONTENT_VERSION if fp.startswith(CONTENT_VERSION + ":") else "v1"


def is_content_fingerprint(fp: str) -> bool:
    body = fp[len(CONTENT_VERSION) + 1:] if fingerprint_version(fp) == CONTENT_VERSION else fp
    return len(body) == 64 and set(body) <= _HEX


def content_fingerprint(state: Dict[str, torch.Tensor], version: str = CONTENT_VERSION) -> str:
    """The base checkpoint's own tensors (not deltas, task heads, version or unifairseq entries), so the
    same whatever method a delta trains. `version="v1"`: the sampled digest older deltas recorded."""
    if version == "v1":
        return sampled_digest(state, _not_base)
    assert version == CONTENT_VERSION, version
    return f"{CONTENT_VERSION}:{full_digest(state, _not_base)}"


def content_fingerprints(state: Dict[str, torch.Tensor]) -> Dict[str, str]:
    """Both versions of a loaded base (v1 costs 4,096 values a tensor): a delta of either kind is checked."""
    return {CONTENT_VERSION: content_fingerprint(state), "v1": content_fingerprint(state, "v1")}


def same_content(recorded: str, have: Dict[str, str]) -> bool:
    """Does the fingerprint a delta recorded name this base (`have`: content_fingerprints)? Compared in the
    recorded version; a version the base was not fingerprinted in does not match."""
    got = (have or {}).get(fingerprint_version(recorded))
    return got is not None and got == recorded


# ---------------------------------------------------------------- search path
def cache_dir() -> str:
    root = os.environ.get("UNIFAIRSEQ_CACHE")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(xdg, "unifairseq")
    return root


def search_folders() -> List[Tuple[str, str]]:
    """(folder, where it comes from) in search order: $UNIFAIRSEQ_BASES, then the cache."""
    out = [(f, "$UNIFAIRSEQ_BASES") for f in os.environ.get("UNIFAIRSEQ_BASES", "").split(os.pathsep) if f]
    out.append((os.path.join(cache_dir(), "bases"), "the cache"))
    return out


def as_path(value: str) -> Optional[str]:
    """The base file a path names (a file, or a folder holding model.pt), else None."""
    if os.path.isfile(value):
        return os.path.abspath(value)
    if os.path.isdir(value) and os.path.isfile(os.path.join(value, BASE_FILE)):
        return os.path.abspath(os.path.join(value, BASE_FILE))
    return None


def by_name(name: str) -> Optional[Found]:
    """<folder>/<name>/model.pt in search order; None for a name that is not valid (never a path)."""
    if not valid_name(name):
        return None
    for folder, where in search_folders():
        p = os.path.join(folder, name, BASE_FILE)
        if os.path.isfile(p):
            return Found(os.path.abspath(p), f"by name {name!r} in {where} ({folder})")
    return None


def candidates() -> Iterator[Tuple[str, str, str]]:
    """(name, base file, where) for every <folder>/<name>/model.pt on the search path whose name is a
    valid base name (hidden and temporary entries, e.g. an `add` under way, are not bases)."""
    seen = set()
    for folder, where in search_folders():
        try:
            names = sorted(os.listdir(folder))
        except OSError:  # missing or unreadable: nothing there
            continue
        for name in names:
            p = os.path.join(folder, name, BASE_FILE)
            real = os.path.realpath(p)
            if valid_name(name) and os.path.isfile(p) and real not in seen:
                seen.add(real)
                yield name, os.path.abspath(p), where


# ---------------------------------------------------------------- the index
class FingerprintIndex:
    """Content fingerprints of base files, cached per (path, size, mtime, inode) and fingerprint version in
    a small JSON file. `fingerprint_file(path)` gives the current version, `fingerprint_file(path, version)`
    another one (what an older delta recorded). The index only saves work: an unreadable index is rebuilt,
    an unwritable one (a read-only cache) is not written, and a lookup answers either way."""

    def __init__(self, fingerprint_file: Callable[[str], str], path: Optional[str] = None):
        self.fingerprint_file = fingerprint_file
        self.path = path or os.path.join(cache_dir(), INDEX_NAME)
        try:
            with open(self.path) as f:
                self.entries = json.load(f)
            if not isinstance(self.entries, dict):
                self.entries = {}
        except (OSError, ValueError):  # no index yet, or a damaged one: rebuilt from the files
            self.entries = {}
        self.dirty = False
        self.failed: Dict[str, str] = {}  # real path -> why it could not be read (this lookup only)

    def get(self, base_file: str, version: str = CONTENT_VERSION) -> str:
        real = os.path.realpath(base_file)
        st = os.stat(real)
        key = dict(size=st.st_size, mtime_ns=st.st_mtime_ns, inode=st.st_ino)
        e = self.entries.get(real)
        # an entry of another layout (before fingerprint versions) or of a changed file is recomputed
        if not (isinstance(e, dict) and all(e.get(k) == v for k, v in key.items())
                and isinstance(e.get("fingerprints"), dict)):
            e = self.entries[real] = dict(key, fingerprints={})
        fps = e["fingerprints"]
        if not isinstance(fps.get(version), str):
            fps[version] = (self.fingerprint_file(real) if version == CONTENT_VERSION
                            else self.fingerprint_file(real, version))
            self.dirty = True
        return fps[version]

    def get_or_warn(self, base_file: str, version: str = CONTENT_VERSION) -> Optional[str]:
        """The fingerprint, or None with a one-line warning for a file that cannot be read (a damaged
        cache entry must not fail lookups of other bases)."""
        real = os.path.realpath(base_file)
        if real in self.failed:  # warned once per lookup
            return None
        try:
            return self.get(base_file, version)
        except (UnifairseqError, OSError) as e:
            self.failed[real] = (str(e).strip().splitlines() or [type(e).__name__])[0]
            logger.warning(f"unifairseq: warning: skipping base {base_file}: {self.failed[real]}")
            return None

    def save(self) -> None:
        """Best effort: the answer is already known, a cache that cannot be written only costs a rescan."""
        if not self.dirty:
            return
        tmp = f"{self.path}.tmp.{os.getpid()}"
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            with open(tmp, "w") as f:
                json.dump(self.entries, f, indent=1, sort_keys=True)
            os.replace(tmp, self.path)  # a reader sees the old index or the new one, never half of one
            self.dirty = False
        except OSError as e:
            logger.info(f"unifairseq: fingerprint index {self.path} not written ({e.strerror or e})")
            try:
                os.remove(tmp)
            except OSError:
                pass


# ---------------------------------------------------------------- resolve
def resolve(flag: Optional[str] = None, name: Optional[str] = None, fingerprint: Optional[str] = None,
            recorded_path: Optional[str] = None, fingerprint_file: Optional[Callable[[str], str]] = None,
            verify: bool = True, option: str = "--delta-base PATH") -> Found:
    """The base file, by the search order above. `flag` is what the user gave (name or path), `name`,
    `fingerprint` and `recorded_path` what the delta recorded. With `fingerprint_file` (path -> content
    fingerprint) and a recorded fingerprint, step 5 can run, and with `verify` a file found by name or
    recorded path whose content differs is passed over (without `verify` the caller's loader checks the
    file it reads anyway, so nothing is read twice). `option`: how to give a path, for the error message.
    Tools call this through unifairseq.fairseq.checkpoint_io.find_base."""
    if flag and as_path(flag) is None and not valid_name(flag):
        if os.sep in flag or (os.altsep and os.altsep in flag):
            raise BaseNotFound(f"base {flag!r}: no such checkpoint file, nor a folder holding {BASE_FILE}; "
                               f"give an existing path ({option}) or a base name")
        check_name(flag, "a base file or a base name")
    index = FingerprintIndex(fingerprint_file) if (fingerprint_file and fingerprint) else None
    tried: List[str] = []

    def accept(found: Found) -> Optional[Found]:
        if index is not None and verify:
            got = index.get_or_warn(found.path, fingerprint_version(fingerprint))
            if got != fingerprint:
                why = index.failed.get(os.path.realpath(found.path))
                tried.append(f"{found.path} ({'another fingerprint' if got is not None else 'unreadable: ' + why})")
                return None
        return found

    def named(n: str, from_flag: bool) -> Optional[Found]:
        places = [os.path.join(folder, n, BASE_FILE) for folder, _ in search_folders()]
        hit = by_name(n)
        if hit is not None:
            hit = accept(hit if not from_flag else Found(hit.path, "from the flag, " + hit.how))
        if hit is None:
            tried.append(f"name {n!r} at {', '.join(places)}")
        return hit

    try:
        if flag:
            path = as_path(flag)
            if path:
                return Found(path, "from the flag (a path)")  # the user's explicit file: the loader checks it
            hit = named(flag, True)
            if hit:
                return hit
        elif name and not valid_name(name):
            tried.append(f"the recorded name {name!r} (not a valid base name, skipped)")
        elif name:
            hit = named(name, False)
            if hit:
                return hit
        if not flag and recorded_path:
            if os.path.isfile(recorded_path):
                hit = accept(Found(os.path.abspath(recorded_path), "at the path recorded when the delta was trained"))
                if hit:
                    return hit
            else:
                tried.append(f"the recorded path {recorded_path} (not there)")
        if index is not None:
            scanned = 0
            for cand_name, path, where in candidates():
                scanned += 1
                if index.get_or_warn(path, fingerprint_version(fingerprint)) == fingerprint:
                    return Found(path, f"by fingerprint {fingerprint[:12]} as {cand_name!r} in {where}")
            tried.append(f"fingerprint {fingerprint[:12]} against {scanned} base file(s) under "
                         + ", ".join(f for f, _ in search_folders()))
    finally:
        if index is not None:
            index.save()
    looked = flag or name or "(no name recorded)"
    add_as = flag if valid_name(flag) else (name if valid_name(name) else "NAME")
    raise BaseNotFound(f"base {looked!r} not found; tried {'; '.join(tried) or 'nothing (no name, path or fingerprint)'}"
                       f": pass its path ({option}), or `unifairseq-base add PATH --name {add_as}`")
