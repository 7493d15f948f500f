"""One command line: every tool is a `unifairseq-*` console script whose usage names it, shared options
are spelled the same everywhere, and errors come in one style."""
import importlib
import re
import subprocess
import sys
import tomllib

import pytest

from env import REPO
from unifairseq import cli

SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]


def test_every_tool_with_a_main_is_a_console_script():
    mains = {str(p.relative_to(REPO))[:-3].replace("/", ".").removesuffix(".__init__")
             for p in (REPO / "unifairseq").rglob("*.py") if re.search(r"^def main\(", p.read_text(), re.M)}
    targets = {t.split(":")[0] for t in SCRIPTS.values()}
    assert mains - targets == set(), f"tools without a console script: {sorted(mains - targets)}"
    assert all(name.startswith("unifairseq-") for name in SCRIPTS)


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_usage_line_shows_the_console_name(name, capsys):
    module, func = SCRIPTS[name].split(":")
    main = getattr(importlib.import_module(module), func)
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {name}"), out[:200]


def test_methods_comma_or_space_and_checked(capsys):
    ap = cli.parser("unifairseq-x", None)
    cli.add_methods(ap, ["mam", "lora_attn", "bitfit"], default=["mam"])
    assert ap.parse_args([]).methods == ["mam"]
    assert ap.parse_args(["--methods", "mam,lora_attn", "bitfit"]).methods == ["mam", "lora_attn", "bitfit"]
    assert ap.parse_args(["--methods", "mam", "lora_attn"]).methods == ap.parse_args(["--methods", "mam,lora_attn"]).methods
    with pytest.raises(SystemExit) as e:
        ap.parse_args(["--methods", "mam,nope"])
    assert e.value.code == cli.USAGE_ERROR
    err = capsys.readouterr().err
    assert "unifairseq-x: error: --methods: unknown nope; choose from mam, lora_attn, bitfit" in err


def test_old_spellings_still_work_and_say_the_new_one(capsys):
    from unifairseq.bench.cli import parse

    assert parse(["--tiny", "--batch", "3"]).batch == parse(["--tiny", "--batch-size", "3"]).batch == 3
    assert "unifairseq-bench: note: --batch is now spelled --batch-size" in capsys.readouterr().err
    assert parse(["--tiny"]).batch == 2  # --tiny's default still applies when neither spelling is given


def test_one_error_style_across_tools(tmp_path):
    """Bad input to three different tools: one line `unifairseq-NAME: error: ...`, exit 2, no traceback."""
    missing = tmp_path / "nope.pt"
    cases = [
        (["-m", "unifairseq.tools.export_cli", "inference", str(missing), str(tmp_path / "o.pt")], "unifairseq-export"),
        (["-m", "unifairseq.data.check", str(tmp_path), "--layout", "sentence_prediction"], "unifairseq-datacheck"),
        (["-m", "unifairseq.metrics.scoring", "bleu", "--hyps", str(missing), "--refs", str(missing),
          "--json", str(tmp_path / "s.json")], "unifairseq-score bleu"),
    ]
    for argv, prog in cases:
        proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=300)
        lines = [ln for ln in proc.stderr.splitlines() if ": error: " in ln]
        assert proc.returncode == cli.USAGE_ERROR, (argv, proc.stderr[-2000:])
        assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr


def test_run_turns_declared_errors_into_one_line(capsys):
    def body():
        raise ValueError("the file x is empty; re-export it")

    assert cli.run("unifairseq-y", body, errors=(ValueError,)) == 2
    assert capsys.readouterr().err == "unifairseq-y: error: the file x is empty; re-export it\n"
    with pytest.raises(KeyError):  # an undeclared error is a bug: it keeps its traceback
        cli.run("unifairseq-y", lambda: {}["k"], errors=(ValueError,))
