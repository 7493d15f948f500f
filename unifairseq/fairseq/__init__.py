"""The fairseq glue: the only part of unifairseq that imports fairseq.

  attention.py     DeltaMultiheadAttention: fairseq's incremental buffers and beam layout around core.heads
  layers.py        encoder/decoder layers and stacks through fairseq's build hooks
  models/          delta_bart / delta_roberta and the <method>_<family>_<size> architectures
  tasks/           translation_rouge, translation_mbart
  optim.py         --optimizer torch_adam
  checkpoint.py    delta checkpoints: trained tensors + base fingerprint, base loading
  safe_globals.py  the torch.load allow-list for fairseq checkpoints (registered where loading happens)

`register()` does what `--user-dir user_dir` does: registers the safe globals, models, tasks and
the optimizer with fairseq.
"""


def register() -> None:
    from . import safe_globals

    safe_globals.register_safe_globals()
    from . import models, optim, tasks  # noqa: F401  (the register_* decorators run on import)
