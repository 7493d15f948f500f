"""The fairseq glue: the only part of unifairseq that imports fairseq.

  attention.py     DeltaMultiheadAttention: fairseq's incremental buffers and beam layout around core.heads;
                   the one attention class of single-delta and bank models
  layers.py        encoder/decoder layers and stacks through fairseq's build hooks (the FFN site, the
                   BitFit layer norm, a bank's delta_ids through encoder and decoder); sites.py the FFN
                   site and the BitFit layer norm
  models/          delta_bart / delta_roberta (one delta, or N with --bank-deltas: bank_* are aliases) and the
                   <method>_<family>_<size> architectures
  tasks/           translation_rouge, translation_mbart
  optim.py         --optimizer torch_adam
  checkpoint_io.py the bottom layer: checkpoint file I/O, the meta keys, the base lookup, DeltaCheckpointError
  ckpt_args.py     a checkpoint's model args; ARCH_PARENT (delta architecture -> plain fairseq parent)
  deltacheck.py    the one check of a delta (.pt or folder) against the model it loads into
  deltafolder.py   shared delta folders on a loaded base: --model-overrides, from_pretrained(base, delta=),
                   load_delta
  resume.py        the torn checkpoint_last.pt repair before fairseq-train resumes
  checkpoint.py    the delta checkpoint mixin: trained tensors + base fingerprint, base loading
  errorhook.py     unifairseq's user errors as one line under fairseq's command lines
  bank.py          the delta bank's API (load_bank, load_hub); model_bank.py its mechanism (ModelBank), below
                   models/, on the same layers; deltaread.py the one reader of deltas; own_delta.py a
                   single-delta model serving more; hub.py the hub of every delta model (deltas=[...])
  safe_globals.py  the torch.load allow-list for fairseq checkpoints (registered where loading happens)

`register()` does what `--user-dir user_dir` does: registers the safe globals, models, tasks and
the optimizer with fairseq, and prints unifairseq's own user errors as one line (sys.excepthook).

torch and fairseq are not in unifairseq's install_requires (an unpinned torch pulls gigabytes of
CUDA packages; fairseq's metadata asks for torchaudio, which would replace torch), so a missing one
is reported here, on import, with the exact pip commands.
"""
import importlib
import sys

# What `pip install unifairseq` leaves to the user (README "pip install").
INSTALL_COMMANDS = {
    "torch": "pip install torch==2.13.0",
    "fairseq": "pip install --no-deps ve-fairseq==0.12.3",
}


def _require(module: str) -> None:
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] == module and e.name != module:
            raise  # a broken install of the module itself: its own message says more
        if e.name != module:  # installed, but one of its dependencies is missing
            raise ModuleNotFoundError(
                f"{module} is installed but cannot import {e.name!r}, which it needs. fairseq is installed "
                "with --no-deps, so its runtime needs come from unifairseq's dependencies: reinstall unifairseq "
                "with them (pip install UNIFAIRSEQ_WHEEL_OR_CHECKOUT -c constraints.txt torch==2.13.0; in a "
                "checkout: bash scripts/install.sh)", name=e.name) from e
        raise ModuleNotFoundError(
            f"unifairseq.fairseq needs {module}, which is not installed in this Python ({sys.executable}). "
            "unifairseq does not install torch or fairseq itself; run\n"
            f"    {INSTALL_COMMANDS['torch']}\n    {INSTALL_COMMANDS['fairseq']}\n"
            "(torch pinned, so that pip takes the CPU wheel and no CUDA packages; fairseq with --no-deps, "
            "so that its torchaudio requirement does not replace torch), then import again.",
            name=module) from None


_require("torch")
_require("fairseq")


def register() -> None:
    # here, not at the top: importing unifairseq.fairseq registers nothing (the register_* decorators run
    # when models/tasks/optim are imported), and the torch/fairseq checks above come first
    from . import errorhook, models, optim, safe_globals, tasks  # noqa: F401

    safe_globals.register_safe_globals()
    # fairseq's command lines catch nothing: unifairseq's user errors (a damaged delta folder, a base
    # not found or not the delta's) are printed as their one line instead of a traceback
    errorhook.install_error_hook()
