"""Edges a new user hits first (issue 19 item 7): the [hf] extra, merged checkpoints loadable by plain
fairseq, a base of another size, the test suite's own cache."""
import subprocess
import sys

from env import BIN, tool_env

HF_MISSING = ("unifairseq-export: error: unifairseq-export hf needs transformers, which a plain pip install of "
              "unifairseq does not bring; install it with: pip install 'unifairseq[hf]'")


def test_export_hf_without_transformers_is_one_line_naming_the_extra(tmp_path):
    # a `transformers` package earlier on the path that fails as a missing one does: the console script
    # itself, in a subprocess, sees transformers as not installed
    block = tmp_path / "block" / "transformers"
    block.mkdir(parents=True)
    (block / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'transformers'\", name='transformers')\n")
    env = tool_env(PYTHONPATH=str(tmp_path / "block"))
    out = tmp_path / "hf_out"
    proc = subprocess.run([str(BIN / "unifairseq-export"), "hf", str(tmp_path / "delta.pt"), str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == HF_MISSING
    assert not out.exists()
    # the block works: without it the same command reaches the (missing) input
    proc = subprocess.run([str(BIN / "unifairseq-export"), "hf", str(tmp_path / "delta.pt"), str(out)],
                          capture_output=True, text=True, env=tool_env(), timeout=300)
    assert proc.returncode == 2 and "transformers" not in proc.stderr.strip().splitlines()[-1], proc.stderr


def _tree(folder):
    """Every path under `folder` with its size and mtime (empty when it does not exist)."""
    import os

    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = os.path.join(root, name)
            st = os.lstat(p)
            out[p] = (st.st_size, st.st_mtime_ns)
    return out


def test_the_suite_keeps_out_of_the_real_home_cache(tmp_path, private_home):
    """conftest.private_home: HOME and the caches point into a temporary folder, for this process and the
    tools it runs; `unifairseq-base add` + `list` (which writes the fingerprint index) write there only."""
    import json
    import os
    from pathlib import Path

    import torch

    from env import REAL_HOME
    from tiny import tiny_model
    from unifairseq.core import bases
    from unifairseq.tools.tiny_base import checkpoint_state

    home = Path(private_home)
    assert Path(os.environ["HOME"]) == home and Path(os.path.expanduser("~")) == home
    assert REAL_HOME != home and not home.is_relative_to(REAL_HOME / ".cache")
    for key in ("XDG_CACHE_HOME", "UNIFAIRSEQ_CACHE"):
        assert Path(os.environ[key]).is_relative_to(home), (key, os.environ[key])
    assert Path(bases.cache_dir()) == home / ".cache" / "unifairseq"

    real_cache = REAL_HOME / ".cache" / "unifairseq"
    before = _tree(real_cache)
    base = tmp_path / "tiny_edge" / "model.pt"
    base.parent.mkdir()
    model, _, args = tiny_model("bart_base")
    torch.save(checkpoint_state(model, args), base)
    for argv in (["add", str(base.parent), "--name", "tiny_edge"], ["list"]):
        proc = subprocess.run([str(BIN / "unifairseq-base"), *argv], capture_output=True, text=True,
                              env=tool_env(), timeout=300)
        assert proc.returncode == 0, proc.stderr
    cache = home / ".cache" / "unifairseq"
    assert (cache / "bases" / "tiny_edge" / "model.pt").resolve() == base.resolve()
    index = json.loads((cache / bases.INDEX_NAME).read_text())
    entries = [Path(p).resolve() for p in index]
    # the run's other tests in this process fingerprint their tiny bases into the same private cache: every
    # entry is one of pytest's temporary files, this test's base among them
    assert base.resolve() in entries
    assert all(p.is_relative_to(home.parent.resolve()) for p in entries), entries
    assert _tree(real_cache) == before  # nothing added, changed or removed in the user's cache


def test_a_base_of_a_sibling_presets_size_names_that_preset():
    """--arch mam_bart_large on a base of bart_base's sizes: the line names both sizes and mam_bart_base
    (the preset whose defaults build the base's sizes). The state dicts carry only what the size reader
    looks at: the embedding width and the numbered layers."""
    from argparse import Namespace

    import torch

    from unifairseq.fairseq import register
    from unifairseq.fairseq.basefit import other_size

    def state(dim, layers):
        sd = {f"{s}.embed_tokens.weight": torch.zeros(4, dim) for s in ("encoder", "decoder")}
        sd.update({f"{s}.layers.{i}.fc1.weight": torch.zeros(1) for s in ("encoder", "decoder") for i in range(layers)})
        return sd

    register()  # the presets' architectures
    base, own = state(768, 6), state(1024, 12)
    assert other_size(base, own, Namespace(arch="mam_bart_large"), "'bart.base/model.pt'") == (
        "the base 'bart.base/model.pt' has embed_dim 768, layers 6; --arch mam_bart_large builds 1024, 12: "
        "use --arch mam_bart_base, the preset of the base's size")
    assert other_size(own, own, Namespace(arch="mam_bart_large"), "x") is None
    # fairseq's --encoder-layers-to-keep prunes layers itself: only the width is compared then
    assert other_size(state(1024, 6), own, Namespace(arch="mam_bart_large", encoder_layers_to_keep="0,1"), "x") is None
