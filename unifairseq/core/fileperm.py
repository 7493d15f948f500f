"""Permissions of the files unifairseq writes: the user's umask, as a plain `open()` would give.

Writers that go through a temporary file and a rename can inherit a mode the user did not ask for:
safetensors' save_file creates its file 0600 and tempfile.mkdtemp its folder 0700, so a shared delta or
Hugging Face export would be unreadable by anyone else. Each such writer calls `as_umask` before the rename.
"""
from __future__ import annotations

import os


def current_umask() -> int:
    # os.umask is the only portable way to read it; it is set straight back
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def as_umask(path: str) -> None:
    """chmod `path` (a file, or a folder and everything below it) to 0o666 / 0o777 & ~umask."""
    mask = current_umask()
    if not os.path.isdir(path):
        os.chmod(path, 0o666 & ~mask)
        return
    for root, dirs, files in os.walk(path):
        os.chmod(root, 0o777 & ~mask)
        for name in files:
            full = os.path.join(root, name)
            if not os.path.islink(full):
                os.chmod(full, 0o666 & ~mask)
