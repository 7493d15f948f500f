"""unifairseq: the unified view of parameter-efficient transfer learning (He et al., ICLR 2022)
as a fairseq extension.

Importing the package has no side effects and does not import fairseq:
  unifairseq.core      torch only: the delta methods, their registry, the plan, head-level math, accounting
  unifairseq.fairseq   the only code that imports fairseq: attention cache, layers, models, tasks, checkpoints
  unifairseq.tools     the command-line tools (export, count, sizes, tiny bases)
  unifairseq.convert   Hugging Face -> fairseq conversion (unifairseq-import-hf, unifairseq-hf-tokenize)
  unifairseq.data      data preparation, GPT-2 BPE and the data check (no torch, no fairseq at import)
  unifairseq.metrics   token-id ROUGE for training, test-set ROUGE / BLEU scoring (unifairseq-score)
`--user-dir user_dir` (or `unifairseq.fairseq.register()`) registers the models with fairseq.
"""
__version__ = "0.1.0"
