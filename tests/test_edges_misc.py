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
