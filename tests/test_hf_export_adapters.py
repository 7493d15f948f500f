"""unifairseq-export hf --adapters: a parallel FFN adapter on BART in AdapterHub `adapters`' format, loaded by
adapters 1.3.0 on transformers 4.57.6 in an environment of its own (adapters cannot be installed beside this
project's transformers 5.24) and compared with the fairseq delta model. That environment is
$UNIFAIRSEQ_ADAPTERS_PYTHON, or built here from the pip registry (about two minutes):
    python -m venv V && V/bin/pip install torch==2.13.0 transformers==4.57.6 adapters==1.3.0
"""
import os
import subprocess
import sys

import pytest
import torch

from hfhelp import delta, fairseq_out
from unifairseq.tools.export_cli import main as export_main

ADAPTERS_ENV = ["torch==2.13.0", "transformers==4.57.6", "adapters==1.3.0"]
CHECK = r"""
import sys, torch, transformers, adapters
w = sys.argv[1]
io = torch.load(w + "/io.pt")
io["inputs"]["attention_mask"] = io["inputs"]["attention_mask"].long()  # adapters takes argmax of it
m = transformers.BartForConditionalGeneration.from_pretrained(w + "/out/base").eval()
with torch.no_grad():
    base = m(**io["inputs"]).logits
adapters.init(m)
m.load_adapter(w + "/out/adapter", set_active=True)
m.eval()
with torch.no_grad():
    out = m(**io["inputs"]).logits
print(transformers.__version__, adapters.__version__, (out - io["ref"]).abs().max().item(),
      (base - io["ref"]).abs().max().item())
"""


@pytest.fixture(scope="module")
def adapters_python(tmp_path_factory):
    given = os.environ.get("UNIFAIRSEQ_ADAPTERS_PYTHON")
    if given:
        return given
    venv = tmp_path_factory.mktemp("adapters_venv")
    steps = [[sys.executable, "-m", "venv", str(venv)],
             [str(venv / "bin" / "pip"), "install", "-q", *ADAPTERS_ENV]]
    for cmd in steps:
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            (pytest.fail if os.environ.get("CI") else pytest.skip)(
                f"cannot build the transformers 4.57 + adapters environment ({' '.join(cmd[-3:])}): "
                f"{p.stderr.strip()[-500:]}; set UNIFAIRSEQ_ADAPTERS_PYTHON to such a python")
    return str(venv / "bin" / "python")


@pytest.mark.slow
@pytest.mark.parametrize("arch,flags", [("scaled_pa_bart_base", ["--ffn-bn", "8"]), ("pa_ffn_bart_base", ["--ffn-bn", "16"])])
def test_parallel_adapter_loads_in_adapters_with_fairseqs_outputs(arch, flags, adapters_python, tmp_path):
    model, task, ckpt = delta(arch, flags, "bart", tmp_path)
    ref, inputs, _ = fairseq_out(model, "bart", task.source_dictionary)
    assert export_main(["hf", str(ckpt), str(tmp_path / "out"), "--adapters"]) == 0
    assert {p.name for p in (tmp_path / "out" / "adapter").iterdir()} == {"adapter_config.json", "pytorch_adapter.bin"}
    torch.save({"inputs": inputs, "ref": ref}, tmp_path / "io.pt")
    p = subprocess.run([adapters_python, "-c", CHECK, str(tmp_path)], capture_output=True, text=True,
                       env=dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=""))
    assert p.returncode == 0, p.stderr[-3000:]
    tf_version, ad_version, diff, moved = p.stdout.split()[-4:]
    print(f"\n{arch}: adapters {ad_version} on transformers {tf_version}: max|diff| {float(diff):.2e} "
          f"(the adapter moves the logits by {float(moved):.2e})")
    assert (tf_version, ad_version) == ("4.57.6", "1.3.0")
    assert float(diff) <= 1e-4 and float(moved) > 1e-2
