"""No sentence lost to `--required-batch-size-multiple`.

fairseq 0.12.3's `fairseq.data.data_utils.batch_by_size` ends with

    if bsz_mult > 1 and len(b[-1]) % bsz_mult != 0:
        b = b[:-1]

so whenever a split's last batch is not a multiple of `--required-batch-size-multiple` (fairseq's
default: 8) it is silently dropped (facebookresearch/fairseq#5036, #5351): fairseq-generate decodes 16
of a 20-sentence test set, and every epoch of training and validation skips up to 7 examples (for a
length-sorted split, always the longest ones). The multiple only shapes batches; nothing in this
project wants it to drop data.

fairseq is not patched (an import has no side effects). The two hooks fairseq itself hands a plugin:

* parse time (`keep_every_batch`): fairseq's parse_args_and_arch calls the selected architecture's
  `add_args` and the selected task's `add_args` with the parser before its final parse; every delta
  architecture and every unifairseq task sets the *default* to 1 there. A value given on the command
  line still wins, and is then handled at build time:
* build time (`no_dropped_batches`): every delta model's build_model and every unifairseq task's
  constructor get the task, whose config fairseq keeps attached to the run's own config (fairseq's
  merge_with_parent keeps `_parent` so that the task config's `II("dataset.…")` interpolations
  resolve). A multiple above 1 there is what fairseq-train's Trainer and fairseq-generate are about to
  batch with (they read `cfg.dataset.required_batch_size_multiple` after building the model), so it
  is set to 1 with a one-line notice. This is what covers a plain `fairseq-generate --path
  DELTA.pt --user-dir user_dir` under fairseq's own `--task translation`, where no architecture or
  task of ours is on the command line.

Not covered: a run in which no unifairseq model or task is built (e.g. `--arch bart_base` under
fairseq's `--task translation` with `--user-dir`): nothing of ours runs there, so pass
`--required-batch-size-multiple 1` yourself. fairseq-interactive and the hub's `generate` do not pass
the multiple to fairseq (it stays 1) and lose nothing.
"""
from __future__ import annotations

import logging

logger = logging.getLogger("unifairseq.fairseq.batching")

FLAG = "--required-batch-size-multiple"


def keep_every_batch(parser) -> None:
    """Parse-time default of 1 (`parser` may be an argument group: argparse shares its defaults and
    actions with the parser, so the default reaches the final parse)."""
    parser.set_defaults(required_batch_size_multiple=1)


def notice(multiple: int, corrected: bool) -> str:
    loss = (f"fairseq 0.12.3 drops a split's last batch when its size is not a multiple of {multiple} "
            f"(facebookresearch/fairseq#5036), losing up to {multiple - 1} sentences of every split")
    if corrected:
        return f"unifairseq: {FLAG} {multiple} set to 1: {loss}"
    return f"unifairseq: {FLAG} {multiple}: {loss}; pass {FLAG} 1 to keep every sentence"


def _dataset_config(task_cfg):
    """The run's `dataset` config node that the task config hangs under, or None (a legacy Namespace
    task config is a copy: the run's config cannot be reached from it)."""
    try:
        from omegaconf import OmegaConf
    except ImportError:  # pragma: no cover - fairseq depends on omegaconf
        return None
    if not OmegaConf.is_config(task_cfg):
        return None
    root = task_cfg._get_root()
    dataset = root.get("dataset", None) if root is not task_cfg else None
    return dataset if OmegaConf.is_config(dataset) and "required_batch_size_multiple" in dataset else None


def no_dropped_batches(task) -> None:
    """Set the run's batch-size multiple to 1 (one notice) where fairseq would drop a last batch."""
    task_cfg = getattr(task, "cfg", None)
    dataset = _dataset_config(task_cfg)
    if dataset is not None:
        multiple = dataset.required_batch_size_multiple
        if isinstance(multiple, int) and multiple > 1:
            dataset.required_batch_size_multiple = 1
            logger.warning(notice(multiple, corrected=True))
        return
    multiple = getattr(task_cfg, "required_batch_size_multiple", None)
    if isinstance(multiple, int) and multiple > 1:
        # a legacy task's Namespace: the Trainer reads another copy, so say what happens and the fix
        logger.warning(notice(multiple, corrected=False))
