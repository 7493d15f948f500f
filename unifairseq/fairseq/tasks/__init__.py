"""fairseq tasks of unifairseq; importing this package registers them:

* `translation_rouge` (unifairseq.fairseq.tasks.summarization): translation + ROUGE on the validation set
  (`--eval-rouge`), for the paper's XSum model selection;
* `translation_mbart` (unifairseq.fairseq.tasks.mbart): fairseq's translation_from_pretrained_bart with
  fairseq 0.12's bugs fixed, for mBART en-ro;
* `delta_bank` (unifairseq.fairseq.tasks.bank): translation_rouge with per-example bank deltas
  (`<delta=NAME>` line tags, --delta-per-line, --default-delta, multi-task --bank-tasks).
"""
from unifairseq.fairseq.tasks import bank, mbart, summarization  # noqa: F401
