"""The layout's promises: importing the package changes nothing and pulls in no fairseq; the core is
torch-only; the method registry is the one place that knows the methods."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PROBE = """
import sys, torch
before = list(torch.serialization.get_safe_globals())
import unifairseq, unifairseq.core.plan, unifairseq.core.presets, unifairseq.core.accounting, unifairseq.core.heads
import unifairseq.core.methods
print('fairseq' in sys.modules, before == list(torch.serialization.get_safe_globals()))
import unifairseq.fairseq
print(before == list(torch.serialization.get_safe_globals()))
unifairseq.fairseq.register()
print(before == list(torch.serialization.get_safe_globals()))
"""


def test_import_has_no_side_effects_and_the_core_needs_no_fairseq():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=REPO, check=True).stdout
    core, glue_import, registered = out.split("\n")[:3]
    assert core == "False True"  # no fairseq, torch's allow-list untouched
    assert glue_import == "True"  # importing the glue registers nothing either
    assert registered == "False"  # register() is where the allow-list grows


def test_every_preset_comes_from_a_method_module():
    from unifairseq.core.methods import METHODS
    from unifairseq.core.presets import PRESETS

    declared = {name for m in METHODS.values() for name in m.presets}
    assert set(PRESETS) == declared | {"mam"}  # MAM: the union of two presets, not a method
    assert {"ia3", "dora_attn"} <= declared


def test_no_source_file_is_over_400_lines():
    long = {str(p.relative_to(REPO)): n for p in (REPO / "unifairseq").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long
