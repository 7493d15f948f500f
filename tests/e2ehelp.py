"""What the end-to-end training tests share: the tiny-BART MAM demo (scripts/demo_tiny_bart.sh) on real
WMT16 en-ro sentences, fairseq-train command lines relaunched from it, and the losses of their logs."""
import json
import re
import subprocess

import pytest

from env import BIN, REPO, require_data, tool_env


@pytest.fixture(autouse=True)
def _enro_data():
    require_data("wmt16_en_ro/dev.en", "wmt16_en_ro/dev.ro")


def run(cmd, **kw):
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=REPO,
                       env=tool_env(), **kw)
    assert p.returncode == 0, f"{cmd[0]} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    """The tiny-BART MAM demo with its default delta-only checkpoints."""
    work = tmp_path_factory.mktemp("demo")
    run(["bash", REPO / "scripts" / "demo_tiny_bart.sh", "--quick", "--workdir", work])
    return work


def train_argv(demo, save_dir, max_update):
    argv = json.loads((demo / "train_args.json").read_text())
    drop = {"--restore-file": 2, "--reset-optimizer": 1, "--reset-dataloader": 1, "--reset-meters": 1,
            "--reset-lr-scheduler": 1, "--max-update": 2, "--save-dir": 2, "--dropout": 2}
    out, i = [], 0
    while i < len(argv):
        if argv[i] in drop:
            i += drop[argv[i]]
            continue
        out.append(argv[i])
        i += 1
    # --finetune-from-model: the base on the first launch, checkpoint_last.pt on every relaunch
    return [BIN / "fairseq-train", *out, "--finetune-from-model", demo / "tiny_bart.pt", "--dropout", "0.1",
            "--max-update", str(max_update), "--save-dir", save_dir]


def losses(log: str):
    out = {}
    for line in log.splitlines():
        m = re.search(r"(\{.*\"num_updates\".*\})", line)
        if m and '"train_loss"' not in m.group(1):
            rec = json.loads(m.group(1))
            if "loss" in rec and "num_updates" in rec:
                out[int(rec["num_updates"])] = rec["loss"]
    return out
