"""`--task delta_bank`: translation_rouge whose every batch says which delta of a bank each example uses.

A delta bank is one frozen base with N deltas (unifairseq.fairseq.bank); each example selects its
delta by `sample["net_input"]["delta_ids"]` (LongTensor [B], indices into `model.bank.names`). This
task puts that tensor into every batch it makes:

* fairseq-interactive: a line may start with a tag `<delta=NAME>` (then optional spaces); the tag is
  removed before tokenization and BPE. Lines without a tag use `--default-delta NAME`.
* fairseq-generate: `--delta-per-line FILE` (one delta name per line of the split, aligned with the
  raw text given to fairseq-preprocess; an empty line means the default); without the flag,
  `DATA/<split>.delta` is read when it exists; otherwise every line uses `--default-delta`.
* fairseq-train: `--bank-tasks NAME:DATA,NAME:DATA,...` trains several tasks at once. Each DATA is a
  fairseq-preprocess output with the same dictionaries as the positional DATA; their splits are
  concatenated, every example carries its task's delta, and batches mix tasks (fairseq orders
  examples by length across the whole concatenation). With the bank architecture's optimizer over all
  deltas, one step updates every delta that has examples in the batch, each from its own examples.

Unknown names fail with one line listing the bank's names. Names become indices only at collate time,
from the model the task built (fairseq-train loads the validation data before it builds the model).
"""
# no `from __future__ import annotations`: fairseq reads the config dataclass field types at run time

import logging
import os
from collections import deque
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np
import torch
from fairseq.data import BaseWrapperDataset, ConcatDataset, Dictionary
from fairseq.data.language_pair_dataset import LanguagePairDataset
from fairseq.tasks import register_task
from fairseq.tasks.translation import load_langpair_dataset

# BankTaskError and split_tag are imported from here too
from unifairseq.core.bank import by_delta, restore_order, take_rows
from unifairseq.fairseq.deltaread import parse_bank_deltas
from unifairseq.fairseq.model_bank import NAME_RE
from unifairseq.fairseq.own_delta import serve_with_others
from unifairseq.fairseq.tasks.bank_inputs import BankTaskError, check_lengths, check_names, read_delta_file, split_tag
from unifairseq.fairseq.tasks.summarization import TranslationRougeConfig, TranslationRougeTask

logger = logging.getLogger(__name__)

def parse_bank_tasks(spec: str):
    """`NAME:DATA,NAME:DATA` -> [(name, data)], names unique."""
    out = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, sep, path = item.partition(":")
        if not sep or not name or not path:
            raise BankTaskError(f"--bank-tasks: {item!r} is not NAME:DATA; write e.g. --bank-tasks sum:data-sum,mt:data-mt")
        if name in [n for n, _ in out]:
            raise BankTaskError(f"--bank-tasks: the name {name!r} appears twice; give each task its own delta name")
        out.append((name, path))
    if not out:
        raise BankTaskError("--bank-tasks is empty; write e.g. --bank-tasks sum:data-sum,mt:data-mt")
    return out


class DeltaTaggedDataset(BaseWrapperDataset):
    """Wraps a dataset whose collater returns fairseq's translation batch and adds
    `net_input["delta_ids"]`, aligned with the batch's own (sorted) order.

    `names[i]` is example i's delta name (None: the task's default); `resolve` maps a list of names to
    bank indices when a batch is made."""

    def __init__(self, dataset, names: Sequence[Optional[str]], resolve, on_collate=None):
        super().__init__(dataset)
        if len(names) != len(dataset):
            raise BankTaskError(f"{len(names)} delta names for {len(dataset)} examples")
        self.vocab = sorted({n for n in names if n is not None}) + [None]
        code = {n: i for i, n in enumerate(self.vocab)}
        self.codes = np.array([code[n] for n in names], dtype=np.int64)
        self.resolve = resolve
        self.on_collate = on_collate

    def __getitem__(self, index):
        # a ConcatDataset's samples carry the index within their part as "id": give the global one
        return dict(self.dataset[index], id=index, delta_code=int(self.codes[index]))

    def collater(self, samples):
        # the inner collater sorts by length: give each sample its position as id, read the order back
        orig = [s["id"] for s in samples]
        codes = [s["delta_code"] for s in samples]
        batch = self.dataset.collater([dict(s, id=j) for j, s in enumerate(samples)])
        if not batch:
            return batch
        perm = batch["id"]
        batch["id"] = torch.tensor(orig, dtype=torch.long)[perm]
        names = [self.vocab[codes[j]] for j in perm.tolist()]
        batch["net_input"]["delta_ids"] = torch.tensor(self.resolve(names), dtype=torch.long)
        if self.on_collate is not None:
            self.on_collate(batch)
        return batch


@dataclass
class DeltaBankConfig(TranslationRougeConfig):
    default_delta: Optional[str] = field(
        default=None, metadata={"help": "the bank delta for examples/lines that name none"})
    delta_per_line: Optional[str] = field(
        default=None, metadata={"help": "fairseq-generate: a file with one delta name per example of the split "
                                        "(empty line: --default-delta); default DATA/<split>.delta when it exists"})
    add_deltas: Optional[str] = field(
        default=None, metadata={"help": "decoding a single-delta checkpoint (--path DELTA.pt): more deltas that "
                                        "share its model, NAME=FILE_OR_FOLDER,...; its own delta is --own-delta"})
    own_delta: str = field(
        default="own", metadata={"help": "with --add-deltas: the name of the --path checkpoint's own delta "
                                         "(the default delta of lines that name none)"})
    bank_tasks: Optional[str] = field(
        default=None, metadata={"help": "multi-task training: NAME:DATA,NAME:DATA,... each DATA a fairseq-preprocess "
                                        "output (same dictionaries as DATA), its examples trained with delta NAME"})


@register_task("delta_bank", dataclass=DeltaBankConfig)
class DeltaBankTask(TranslationRougeTask):
    cfg: DeltaBankConfig

    def __init__(self, cfg, src_dict, tgt_dict):
        super().__init__(cfg, src_dict, tgt_dict)
        self.bank_names: Optional[List[str]] = None
        self.bank_default: Optional[str] = None
        self.tasks = parse_bank_tasks(cfg.bank_tasks) if cfg.bank_tasks else None
        self._line_names: Optional[List[Optional[str]]] = None
        self._pending = deque()  # inference batches whose delta ids fairseq-interactive drops
        self._unchecked = []  # (names, where) read before the bank model existed: checked when it is built
        self._lines_read = 0  # fairseq-interactive's input lines so far, to name a bad one
        self._max_source: Optional[int] = None

    # --------------------------------------------------------------- names -> indices
    def build_model(self, cfg, from_checkpoint=False):
        model = super().build_model(cfg, from_checkpoint)
        bank = getattr(model, "bank", None)
        if bank is None and self.cfg.add_deltas:
            # a single-delta model: its own delta and the added ones become its bank once its base and
            # delta are loaded (build_generator, which fairseq calls after loading, before decoding)
            self._added = parse_bank_deltas(self.cfg.add_deltas)
            own = self.cfg.own_delta
            if not NAME_RE.match(own or "") or own in self._added:
                raise BankTaskError(f"--own-delta {own!r}: give the --path checkpoint's delta a name of letters, "
                                    "digits, '_' or '-' that --add-deltas does not use")
            self.bank_names, self.bank_default = [own, *self._added], own
        elif bank is None:
            raise BankTaskError(f"--task delta_bank needs a bank model (e.g. --arch bank_bart_base --bank-deltas ...) "
                                f"or, for a single-delta checkpoint, --add-deltas NAME=FILE,...; "
                                f"{type(model).__name__} has no .bank")
        else:
            self.bank_names = list(bank.names)
            self.bank_default = getattr(bank, "default", None)  # --bank-default, when --default-delta is not given
        self.resolve([n for n, _ in self.tasks or ()] + [self.cfg.default_delta] * bool(self.cfg.default_delta))
        model_max = model.max_positions()
        limits = [self.cfg.max_source_positions, model_max[0] if isinstance(model_max, tuple) else model_max]
        self._max_source = min((int(x) for x in limits if isinstance(x, (int, float))), default=None)
        for names, where in self._unchecked:
            self._check_names(names, where)
        self._unchecked = []
        return model

    def _check_names(self, names, where) -> None:
        """Every name of a side file or of tagged lines, before any batch is made (bank_inputs.check_names)."""
        if self.bank_names is None:
            self._unchecked.append((names, where))
            return
        check_names(names, self.bank_names, self.cfg.default_delta or self.bank_default, where)

    def resolve(self, names: Sequence[Optional[str]]) -> List[int]:
        if self.bank_names is None:
            raise BankTaskError("delta names cannot be resolved before the bank model is built")
        out = []
        for n in names:
            n = n if n is not None else (self.cfg.default_delta or self.bank_default)
            if n is None:
                raise BankTaskError(f"an example names no delta and there is no --default-delta (nor the model's "
                                    f"--bank-default); "
                                    f"the bank has: {', '.join(self.bank_names)}")
            if n not in self.bank_names:
                raise BankTaskError(f"unknown delta {n!r}; the bank has: {', '.join(self.bank_names)}")
            out.append(self.bank_names.index(n))
        return out

    # --------------------------------------------------------------- data
    def _load_pair(self, path: str, split: str, combine: bool):
        c = self.cfg
        return load_langpair_dataset(
            path, split, c.source_lang, self.src_dict, c.target_lang, self.tgt_dict, combine=combine,
            dataset_impl=c.dataset_impl, upsample_primary=c.upsample_primary, left_pad_source=c.left_pad_source,
            left_pad_target=c.left_pad_target, max_source_positions=c.max_source_positions,
            max_target_positions=c.max_target_positions, load_alignments=c.load_alignments,
            truncate_source=c.truncate_source, num_buckets=c.num_batch_buckets, shuffle=(split != "test"),
            pad_to_multiple=c.required_seq_len_multiple)

    def _check_dicts(self, path: str):
        for lang, own in ((self.cfg.source_lang, self.src_dict), (self.cfg.target_lang, self.tgt_dict)):
            f = os.path.join(path, f"dict.{lang}.txt")
            if not os.path.isfile(f):
                raise BankTaskError(f"--bank-tasks: {f} not found; each DATA must be a fairseq-preprocess output")
            d = Dictionary.load(f)
            if d.symbols != own.symbols:
                raise BankTaskError(f"--bank-tasks: {f} differs from the dictionary of {self.cfg.data}; binarize every "
                                    f"task with the base's dictionary (fairseq-preprocess --srcdict/--tgtdict)")

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        if self.tasks is None:
            super().load_dataset(split, epoch=epoch, combine=combine, **kwargs)
            self.datasets[split] = DeltaTaggedDataset(self.datasets[split], self._split_names(split),
                                                      self.resolve)
            return
        parts, names = [], []
        for name, path in self.tasks:
            self._check_dicts(path)
            ds = self._load_pair(path, split, combine)
            parts.append(ds)
            names += [name] * len(ds)
            logger.info(f"delta_bank: {split} of task {name!r}: {len(ds)} examples from {path}")
        inner = parts[0] if len(parts) == 1 else ConcatDataset(parts)
        self.datasets[split] = DeltaTaggedDataset(inner, names, self.resolve)

    def _split_names(self, split: str) -> List[Optional[str]]:
        n = len(self.datasets[split])
        path = self.cfg.delta_per_line
        if path is None:
            guess = os.path.join(self.cfg.data.split(os.pathsep)[0], f"{split}.delta")
            path = guess if os.path.isfile(guess) else None
        if path is None:
            return [None] * n
        names = read_delta_file(path, "--delta-per-line" if self.cfg.delta_per_line else f"the {split} delta file")
        if len(names) != n:
            raise BankTaskError(f"{path} has {len(names)} lines but split {split!r} has {n} examples; "
                                f"write one delta name (or an empty line) per example")
        self._check_names(names, lambda i: f"{path} line {i + 1}")
        logger.info(f"delta_bank: per-line deltas of {split} from {path}")
        return names

    # --------------------------------------------------------------- fairseq-interactive
    def get_interactive_tokens_and_lengths(self, lines, encode_fn):
        first, self._lines_read = self._lines_read, self._lines_read + len(lines)

        def where(i):
            return f"input line {first + i + 1}"

        # the whole batch (fairseq-interactive's --buffer-size lines) is checked before any of it is decoded
        names, plain = zip(*(split_tag(l, where(i)) for i, l in enumerate(lines))) if lines else ((), ())
        self.resolve([])  # raises its one line when no bank model was built (fairseq-interactive builds it first)
        self._check_names(list(names), where)
        self._line_names = list(names)
        tokens, lengths = super().get_interactive_tokens_and_lengths(list(plain), encode_fn)
        check_lengths(lengths, self._max_source, where)
        return tokens, lengths

    def build_dataset_for_inference(self, src_tokens, src_lengths, constraints=None, delta_names=None):
        """`delta_names`: one per sentence (None: the default). fairseq-interactive passes none: the names
        come from the tags that get_interactive_tokens_and_lengths removed from the same lines."""
        if delta_names is None and self._line_names is not None and len(self._line_names) == len(src_tokens):
            delta_names = self._line_names
        self._line_names = None
        ds = LanguagePairDataset(src_tokens, src_lengths, self.source_dictionary, tgt_dict=self.target_dictionary,
                                 constraints=constraints)
        if delta_names is None and self.cfg.default_delta is None and self.bank_default is None:
            return ds  # nothing named here: the caller puts delta_ids in (the bank hub) or the bank's default applies
        return DeltaTaggedDataset(ds, list(delta_names or [None] * len(src_tokens)), self.resolve,
                                  on_collate=self._pending.append)

    def build_generator(self, models, args, **kwargs):
        added = getattr(self, "_added", None)
        if added is not None:
            for model in models:
                if getattr(model, "bank", None) is None:
                    serve_with_others(model, self.cfg.own_delta, added)
        return super().build_generator(models, args, **kwargs)

    def inference_step(self, generator, models, sample, prefix_tokens=None, constraints=None):
        """fairseq-interactive builds its sample from src_tokens/src_lengths only and drops delta_ids;
        its batches reach this method in the order the inference dataset collated them."""
        net = sample["net_input"]
        if "delta_ids" not in net:
            if not self._pending:
                raise BankTaskError("a batch without delta_ids that this task did not make; build it with "
                                    "task.build_dataset_for_inference (or put net_input['delta_ids'] in it)")
            made = self._pending.popleft()
            if not torch.equal(made["net_input"]["src_tokens"], net["src_tokens"].cpu()):
                raise BankTaskError("inference batches arrived out of order; cannot match their delta ids")
            sample = dict(sample, net_input=dict(net, delta_ids=made["net_input"]["delta_ids"].to(
                net["src_tokens"].device)))
        elif self._pending and torch.equal(self._pending[0]["net_input"]["src_tokens"], net["src_tokens"].cpu()):
            self._pending.popleft()  # a caller that kept delta_ids as collated (fairseq's hub interface)
        sample, order = by_delta(sample)  # each delta's sentences contiguous: views at every site
        if order is not None:
            n = order.numel()
            prefix_tokens, constraints = take_rows(prefix_tokens, order, n), take_rows(constraints, order, n)
        hypos = super().inference_step(generator, models, sample, prefix_tokens=prefix_tokens,
                                       constraints=constraints)
        return restore_order(hypos, order)

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        # the loss and its gradients are sums over sentences: the same in any row order
        return super().train_step(by_delta(sample)[0], model, criterion, optimizer, update_num, ignore_grad)

    def valid_step(self, sample, model, criterion):
        return super().valid_step(by_delta(sample)[0], model, criterion)


if __name__ == "__main__":  # the command line is tools/bank_cli.py; this module is its task and library
    raise SystemExit("unifairseq/fairseq/tasks/bank.py is a library: run unifairseq-bank "
                     "(or python -m unifairseq.tools.bank_cli)")
