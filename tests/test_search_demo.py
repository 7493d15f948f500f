"""unifairseq-search --demo end to end (issue 17): the real all-MiniLM-L6-v2 weights and the real SST-2, a
reduced run (64 sampled training sentences, 2 updates, one point) so that it takes seconds; the committed
table in docs/search.md comes from the full run. The trial is a plain scripts/train_glue.sh run on the
imported MiniLM, its number the one fairseq logged, its stored count the one the trained model reports."""
import csv
import json
import re
import subprocess
import sys

import pytest

from env import REPO, require_data, tool_env

pytestmark = pytest.mark.slow

POINT = "points:\n  - ffn_mode: adapter\n    ffn_option: parallel\n    ffn_adapter_scalar: 4.0\n    ffn_bn: 4\n"


def search(out, space):
    proc = subprocess.run([sys.executable, "-m", "unifairseq.search.cli", "--demo", "--train-examples", "64",
                           "--space", str(space), "--workers", "1", "--out", str(out)], cwd=REPO, env=tool_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_demo_trains_real_minilm_trials_through_train_glue(tmp_path):
    require_data("glue/SST-2/train.tsv", "glue/SST-2/dev.tsv")
    space = tmp_path / "one.yaml"
    space.write_text(POINT, encoding="utf-8")
    out = tmp_path / "demo"
    search(out, space)
    with open(out / "trials.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["state"] for r in rows] == ["COMPLETE"], rows
    folder = out / "trials" / "0000"
    argv = json.loads((folder / "train_args.json").read_text())
    # train_glue.sh's command on the imported MiniLM: its sizes, its checkpoint, the demo's rate last
    assert argv[argv.index("--finetune-from-model") + 1] == str(out / "demo_inputs" / "minilm" / "model.pt")
    assert argv[argv.index("--encoder-embed-dim") + 1] == "384" and argv[argv.index("--encoder-layers") + 1] == "6"
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--lr"][-1] == "2e-3"
    assert argv[argv.index("--max-update") + 1] == "2"  # one epoch of the 64 sampled sentences, batch 32
    log = (folder / "train.log").read_text(encoding="utf-8")
    valid = [json.loads(l[l.index("{"):]) for l in log.splitlines() if "| valid |" in l]
    assert float(rows[0]["metric"]) == max(float(v["valid_accuracy"]) for v in valid)
    m = re.search(r"of the ([\d,]+) frozen base parameters\); paper formula count ([\d,]+)", log)
    assert int(rows[0]["stored_params"]) == int(m.group(2).replace(",", "")) == 2 * 4 * 384 * 6
    assert json.loads((out / "best.json").read_text())["base_params"] == int(m.group(1).replace(",", ""))
    meta = json.loads((out / "demo_inputs" / "sst2" / "meta.json").read_text())
    assert meta["train_examples"] == 64 and meta["valid_examples"] == 872  # the whole dev set
    assert len((out / "demo_inputs" / "raw" / "train.input0").read_text().splitlines()) == 64
    assert f"| 0 | `{rows[0]['label']}` | file |  | 18,432 | 0.081 | {round(float(rows[0]['metric']), 4)} * |" \
        in (out / "trials.md").read_text()
    # the same command again resumes: the inputs are reused and the finished trial is not rerun
    stamps = [(out / "demo_inputs" / "prepared.json").stat().st_mtime, (folder / "train.log").stat().st_mtime]
    search(out, space)
    assert [(out / "demo_inputs" / "prepared.json").stat().st_mtime, (folder / "train.log").stat().st_mtime] == stamps
