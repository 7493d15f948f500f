"""Load a checkpoint with plain torch and plain fairseq in a fresh interpreter -- no plugin, no --user-dir, no
unifairseq import, nothing allow-listed -- and run it on given inputs (issue 19: what the project writes for
plain fairseq holds only builtin containers and tensors)."""
import os
import subprocess
import sys

import torch

from env import tool_env

PLAIN_RUN = r"""
import argparse, sys, torch
path, data, inputs, out, head = sys.argv[1:6]
torch_own = list(torch.serialization.get_safe_globals())  # what torch itself registers (its own classes)
assert argparse.Namespace not in torch_own and not any("fairseq" in repr(g) for g in torch_own), torch_own
torch.load(path, map_location="cpu", weights_only=True)
from fairseq import checkpoint_utils
[model], cfg, task = checkpoint_utils.load_model_ensemble_and_task(
    [path], arg_overrides={"data": data, "load_checkpoint_heads": True})
assert not any(m.startswith("unifairseq") for m in sys.modules), "plain fairseq only"
assert list(torch.serialization.get_safe_globals()) == torch_own
model.eval()
x = torch.load(inputs, weights_only=True)
with torch.no_grad():
    y = model(x, features_only=True, classification_head_name=head or None)[0]
torch.save(y, out)
print(type(model).__module__, type(model).__name__, cfg.task._name)
"""


def plain_env() -> dict:
    """The tools' environment without the repository on PYTHONPATH."""
    return {k: v for k, v in tool_env().items() if k != "PYTHONPATH"}


def run_plain_roberta(path, data, tokens, tmp_path, head=None):
    """(model class and task line, the outputs) of plain fairseq's model from `path` on `tokens` (B x T): the
    classification head's logits when `head` is named, else the last hidden states."""
    inputs, out = tmp_path / "plain_inputs.pt", tmp_path / "plain_out.pt"
    torch.save(tokens, inputs)
    p = subprocess.run([sys.executable, "-c", PLAIN_RUN, str(path), str(data), str(inputs), str(out), head or ""],
                       capture_output=True, text=True, cwd=tmp_path, env=plain_env(), timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    y = torch.load(out, weights_only=True)
    os.remove(out)
    return p.stdout.split()[-3:], y
