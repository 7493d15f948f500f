"""Data preparation steps of the experiment scripts (scripts/preprocess_*.sh), run through
`unifairseq-pipeline xsum-raw | glue-tsv | spm-train | spm-encode | binarize` (unifairseq/pipeline.py):
raw XSum and GLUE TSV files to one example per line, a small sentencepiece model and its pieces, and
fairseq-preprocess in one process. Standard library at import; sentencepiece and fairseq are imported
by the steps that use them.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple
from unifairseq.data import tsv
from unifairseq.errors import UnifairseqError


class PipelineError(UnifairseqError, RuntimeError):
    """A user error (missing or malformed input), reported as one line."""


# ------------------------------------------------------------------ XSum raw
XSUM_SPLITS = (("train", ("train",)), ("valid", ("val", "valid", "validation")), ("test", ("test",)))


def _clean(text: str) -> str:
    """One line per example: XSum documents hold newlines between sentences."""
    return " ".join(str(text).split())


def read_xsum_split(raw: str, names: Sequence[str]) -> Optional[Tuple[List[str], List[str], str]]:
    """(documents, summaries, description) of the first layout found for one split, else None.

    Layouts: NAME.source + NAME.target (one example per line), or NAME.jsonl / NAME.json
    (JSON lines with "document" and "summary", as in the Hugging Face `xsum` data set)."""
    for name in names:
        src, tgt = os.path.join(raw, f"{name}.source"), os.path.join(raw, f"{name}.target")
        if os.path.isfile(src) or os.path.isfile(tgt):
            if not (os.path.isfile(src) and os.path.isfile(tgt)):
                raise PipelineError(f"{src} and {tgt} must both exist (found only one)")
            with open(src, encoding="utf-8", newline="\n") as f:
                docs = [_clean(l) for l in f.read().split("\n")]
            with open(tgt, encoding="utf-8", newline="\n") as f:
                sums = [_clean(l) for l in f.read().split("\n")]
            for lst in (docs, sums):  # a trailing newline is not an example
                if lst and lst[-1] == "":
                    lst.pop()
            if len(docs) != len(sums):
                raise PipelineError(f"{src} has {len(docs)} lines but {tgt} has {len(sums)}: the files must be "
                                    "parallel (one document / one summary per line)")
            return docs, sums, f"{src} + {tgt}"
        for ext in ("jsonl", "json"):
            path = os.path.join(raw, f"{name}.{ext}")
            if os.path.isfile(path):
                docs, sums = [], []
                with open(path, encoding="utf-8") as f:
                    for i, line in enumerate(f, 1):
                        if not line.strip():
                            continue
                        try:
                            row = json.loads(line)
                        except json.JSONDecodeError as e:
                            raise PipelineError(f"{path}:{i}: not a JSON line ({e.msg}); expected one object per "
                                                'line with "document" and "summary"') from None
                        if not isinstance(row, dict) or "document" not in row or "summary" not in row:
                            raise PipelineError(f'{path}:{i}: the object has no "document" and "summary" fields')
                        docs.append(_clean(row["document"]))
                        sums.append(_clean(row["summary"]))
                return docs, sums, path
    return None


def read_lines(path: str, error=UnifairseqError, what: str = "") -> List[str]:
    """PATH's lines, exactly as written (only "\n" splits them; the final newline ends the last line
    rather than starting an empty one). A missing file raises `error` naming it."""
    if not os.path.isfile(path):
        raise error(f"{what}{path!r} does not exist")
    with open(path, encoding="utf-8", newline="\n") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def write_lines(path: str, lines: Sequence[str]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(l + "\n" for l in lines)


def xsum_raw(raw: str, out: str, select_size: int = 1600) -> Dict[str, int]:
    """Write OUT/{train,valid,valid_select,test}.{source,target}, one cleaned example per line.
    Training pairs with an empty side are dropped; valid/test keep every example."""
    if not os.path.isdir(raw):
        raise PipelineError(f"raw XSum directory {raw!r} does not exist")
    counts = {}
    for split, names in XSUM_SPLITS:
        found = read_xsum_split(raw, names)
        if found is None:
            if split == "test":
                print("xsum-raw: no test split (test.source/test.target or test.jsonl); skipped", file=sys.stderr)
                continue
            alts = " or ".join(f"{n}.source + {n}.target or {n}.jsonl" for n in names)
            raise PipelineError(f"no {split} split in {raw!r}: expected {alts}")
        docs, sums, desc = found
        if split == "train":
            keep = [i for i in range(len(docs)) if docs[i] and sums[i]]
            if len(keep) < len(docs):
                print(f"xsum-raw: dropped {len(docs) - len(keep)} training pairs with an empty document or summary",
                      file=sys.stderr)
            docs, sums = [docs[i] for i in keep], [sums[i] for i in keep]
        if not docs:
            raise PipelineError(f"the {split} split ({desc}) has no examples")
        write_lines(os.path.join(out, f"{split}.source"), docs)
        write_lines(os.path.join(out, f"{split}.target"), sums)
        counts[split] = len(docs)
        print(f"xsum-raw: {split}: {len(docs)} examples from {desc}", file=sys.stderr)
        if split == "valid":
            n = min(select_size, len(docs)) if select_size > 0 else len(docs)
            write_lines(os.path.join(out, "valid_select.source"), docs[:n])
            write_lines(os.path.join(out, "valid_select.target"), sums[:n])
            counts["valid_select"] = n
    return counts


# ------------------------------------------------------------------ GLUE
GLUE_TASKS = {
    # task: (first sentence column, second sentence column or None, label columns in order of preference,
    #        number of classes, default dev file)
    "MNLI": ("sentence1", "sentence2", ("gold_label", "label"), 3, "dev_matched.tsv"),
    "SST-2": ("sentence", None, ("label",), 2, "dev.tsv"),
}


def _read_tsv(path: str, task: str) -> Tuple[List[str], List[str], List[str], int]:
    """(first sentences, second sentences or "", labels, rows skipped) of a GLUE TSV file."""
    s1_col, s2_col, label_cols, _, _ = GLUE_TASKS[task]
    try:
        table = tsv.read_glue_tsv(path, [s1_col] + ([s2_col] if s2_col else []), label_cols, skip_unlabelled=True)
    except tsv.TsvError as e:
        raise PipelineError(f"{task}: {e}") from None
    s1 = [r[0] for r in table.rows]
    s2 = [r[1] if s2_col else "" for r in table.rows]
    return s1, s2, [r[-1] for r in table.rows], table.skipped


def glue_tsv(task: str, train: str, dev: str, out: str, max_train: int = 0) -> Dict[str, object]:
    """Write OUT/{train,valid}.{input0,input1,label} (input1 only for sentence pairs)."""
    if task not in GLUE_TASKS:
        raise PipelineError(f"unknown GLUE task {task!r}; supported: {', '.join(GLUE_TASKS)}")
    meta = {"task": task, "num_classes": GLUE_TASKS[task][3], "pair": GLUE_TASKS[task][1] is not None}
    for split, path in (("train", train), ("valid", dev)):
        s1, s2, labels, skipped = _read_tsv(path, task)
        if split == "train" and max_train > 0:
            s1, s2, labels = s1[:max_train], s2[:max_train], labels[:max_train]
        write_lines(os.path.join(out, f"{split}.input0"), s1)
        if meta["pair"]:
            write_lines(os.path.join(out, f"{split}.input1"), s2)
        write_lines(os.path.join(out, f"{split}.label"), labels)
        meta[f"{split}_examples"] = len(labels)
        meta[f"{split}_file"] = os.path.abspath(path)
        print(f"glue-tsv: {task} {split}: {len(labels)} examples from {path}"
              + (f" ({skipped} rows without a label or with missing columns skipped)" if skipped else ""),
              file=sys.stderr)
    train_labels = set(open(os.path.join(out, "train.label"), encoding="utf-8").read().split("\n")) - {""}
    dev_labels = set(open(os.path.join(out, "valid.label"), encoding="utf-8").read().split("\n")) - {""}
    if not dev_labels <= train_labels:
        raise PipelineError(f"dev labels {sorted(dev_labels - train_labels)} never occur in the training data")
    return meta


# ------------------------------------------------------------------ sentencepiece
def spm_train(inputs: Sequence[str], model_prefix: str, vocab_size: int, seed_sentences: int = 200000) -> str:
    """A small sentencepiece model on the given text (the tiny stand-in for mbart.cc25's
    sentence.bpe.model)."""
    import sentencepiece as spm

    for p in inputs:
        if not os.path.isfile(p):
            raise PipelineError(f"sentencepiece training input {p!r} does not exist")
    os.makedirs(os.path.dirname(os.path.abspath(model_prefix)), exist_ok=True)
    spm.SentencePieceTrainer.train(
        input=",".join(inputs), model_prefix=model_prefix, vocab_size=vocab_size, model_type="bpe",
        character_coverage=1.0, hard_vocab_limit=False, input_sentence_size=seed_sentences,
        shuffle_input_sentence=True, minloglevel=2)
    return model_prefix + ".model"


def spm_encode(model: str, inputs: Sequence[str], outputs: Sequence[str], max_pieces: int = 0) -> List[int]:
    """Each line -> space-separated sentencepiece pieces (what fairseq's mBART recipe gets from
    `spm_encode --output_format=piece`), truncated to the first `max_pieces` pieces."""
    import sentencepiece as spm

    if not os.path.isfile(model):
        raise PipelineError(f"sentencepiece model {model!r} does not exist")
    if len(inputs) != len(outputs):
        raise PipelineError(f"{len(inputs)} inputs but {len(outputs)} outputs")
    sp = spm.SentencePieceProcessor(model_file=model)
    counts = []
    for src, dst in zip(inputs, outputs):
        lines = read_lines(src, PipelineError, "input ")
        pieces = sp.encode([l.strip() for l in lines], out_type=str)
        if max_pieces > 0:
            pieces = [p[:max_pieces] for p in pieces]
        write_lines(dst, [" ".join(p) for p in pieces])
        counts.append(len(lines))
    return counts


def binarize(jobs: Sequence[Sequence[str]]) -> None:
    """fairseq-preprocess for each argument list, in this one process (fairseq is imported once,
    not once per call: the GLUE data needs three calls)."""
    import logging

    from fairseq import options
    from fairseq_cli import preprocess

    for argv in jobs:
        args = options.get_preprocessing_parser().parse_args(list(argv))
        before = list(preprocess.logger.handlers)
        try:
            preprocess.main(args)
        finally:  # main() adds a log file handler per call
            for h in preprocess.logger.handlers[len(before):]:
                preprocess.logger.removeHandler(h)
                h.close()
        logging.getLogger("unifairseq.data.prepare").info(f"binarized into {args.destdir}")
