"""Run a module as `python -m MODULE ARGS` with unpickling watched: torch.load refuses any file under
$NOUNPICKLE_DIR (unless told weights_only=True explicitly: `unifairseq-base find DIR` checks the folder's
model.pt that way, which runs no code whatever the environment) and records every file it reads (one per line) in $NOUNPICKLE_LOG; pickle.load, loads
and Unpickler refuse outright. The shared-delta tests run fairseq-generate / -interactive under it.

    python tests/nounpickle_run.py fairseq_cli.generate DATA ...
    python tests/nounpickle_run.py script.py ARGS ...
"""
import os
import pickle
import runpy
import sys

import torch

FORBIDDEN = os.path.realpath(os.environ["NOUNPICKLE_DIR"])
LOG = os.environ["NOUNPICKLE_LOG"]
_real_load = torch.load


def _name(f):
    return os.path.realpath(f if isinstance(f, (str, os.PathLike)) else getattr(f, "name", "?"))


def _load(f, *args, **kwargs):
    name = _name(f)
    with open(LOG, "a") as log:
        log.write(name + "\n")
    if name.startswith(FORBIDDEN) and kwargs.get("weights_only") is not True:
        raise SystemExit(f"nounpickle: torch.load on the delta folder: {name}")
    return _real_load(f, *args, **kwargs)


def _refuse(*args, **kwargs):
    raise SystemExit("nounpickle: pickle used")


torch.load = _load
pickle.load = pickle.loads = pickle.Unpickler = _refuse
module, sys.argv = sys.argv[1], [sys.argv[1], *sys.argv[2:]]
if module.endswith(".py"):
    runpy.run_path(module, run_name="__main__")
else:
    runpy.run_module(module, run_name="__main__", alter_sys=True)
