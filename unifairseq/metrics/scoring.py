"""Test-set scoring of fairseq-generate output: ROUGE for XSum, BLEU for WMT16 en-ro.

    unifairseq-score rouge --generate generate-test.txt --refs test.target --json scores.json
    unifairseq-score bleu  --generate generate-test.txt --refs test.ro --spm-model sentence.bpe.model \\
        --strip '[ro_RO]' --json scores.json

Hypotheses are the `H-<id>` lines of fairseq-generate, put back in data set order (fairseq prints
them in batch order) and checked to cover every id once; the references are the raw, untokenized
target file. Then:

* ROUGE (XSum): the hypothesis symbols (GPT-2 ids) are decoded to text with the GPT-2 BPE
  (`unifairseq.data.bpe`); ROUGE-1/2/L/Lsum F1 (also P and R) with Google's `rouge-score`,
  `use_stemmer=True`, averaged over the test set (the mean that `datasets`' rouge metric
  bootstraps around). ROUGE-Lsum needs one sentence per line: NLTK's punkt when its data is
  installed, else a rule that splits after . ! ? followed by a space (XSum summaries are single
  sentences, so it rarely matters); the JSON says which.
* BLEU (en-ro): the hypothesis pieces are decoded with the sentencepiece model (language tags
  such as `[ro_RO]` removed), then two numbers:
  - `bleu`: standard detokenized sacreBLEU (13a tokenization) against the raw references;
  - `bleu_wmt16_ro`: the paper's number (as the mBART and the paper's reference scripts compute it):
    hypotheses and references both go through the WMT16 Romanian pipeline -- Moses
    replace-unicode-punctuation + normalize-punctuation -l ro (`sacremoses.MosesPunctNormalizer`),
    remove-non-printing-char, normalise-romanian.py (s/t-cedilla -> s/t-comma), remove-diacritics.py,
    Moses tokenizer.perl -no-escape -l ro (`sacremoses.MosesTokenizer`) -- then sacreBLEU with
    `tokenize='none'` (the text is already tokenized).
"""
from __future__ import annotations

import json
import os
import re
import sys
from typing import Dict, Iterable, List, Optional, Sequence
from unifairseq import cli
from unifairseq.data import bpe, prepare
from unifairseq.errors import UnifairseqError

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


class ScoringError(UnifairseqError, RuntimeError):
    """A user error (missing file, incomplete generate output), reported as one line."""


# ----------------------------------------------------------------- hypotheses
def read_lines(path: str) -> List[str]:
    return prepare.read_lines(path, ScoringError)


def extract_hypotheses(generate_out: str, expected: Optional[int] = None) -> List[str]:
    """The best hypothesis (`H-<id>\\tscore\\ttext`) of every example, in id order."""
    hyps: Dict[int, str] = {}
    for line in read_lines(generate_out):
        if not line.startswith("H-"):
            continue
        head, _, rest = line.partition("\t")
        try:
            idx = int(head[2:])
        except ValueError:
            continue
        _score, _, text = rest.partition("\t")
        if idx not in hyps:  # with --nbest > 1 the first is the best
            hyps[idx] = text
    if not hyps:
        raise ScoringError(f"no H- lines in {generate_out!r}: did fairseq-generate fail? (see the end of that file)")
    n = expected if expected is not None else max(hyps) + 1
    missing = [i for i in range(n) if i not in hyps]
    if missing or len(hyps) != n:
        raise ScoringError(f"{generate_out}: {len(hyps)} hypotheses for {n} examples (missing ids "
                           f"{missing[:10]}{'...' if len(missing) > 10 else ''}); fairseq 0.12 drops the last "
                           "partial batch unless --required-batch-size-multiple 1, and "
                           "--skip-invalid-size-inputs-valid-test skips long inputs")
    return [hyps[i] for i in range(n)]


def gpt2_detokenize(lines: Iterable[str], encoder_json: Optional[str] = None,
                    vocab_bpe: Optional[str] = None) -> List[str]:
    enc = bpe.get_encoder(encoder_json, vocab_bpe)
    return [bpe.decode_line(enc, l) for l in lines]


def spm_detokenize(lines: Iterable[str], spm_model: Optional[str] = None, strip: Sequence[str] = ()) -> List[str]:
    """Sentencepiece pieces -> text; `strip` symbols (language tags) are removed first."""
    sp = None
    if spm_model:
        if not os.path.isfile(spm_model):
            raise ScoringError(f"sentencepiece model {spm_model!r} does not exist")
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=spm_model)
    out = []
    for line in lines:
        pieces = [p for p in line.split() if p not in strip]
        if sp is not None:
            out.append(sp.decode_pieces(pieces).strip())
        else:  # fairseq's --remove-bpe sentencepiece
            out.append("".join(pieces).replace("\u2581", " ").strip())
    return out


# ----------------------------------------------------------------- ROUGE
_SENT_END = re.compile(r"(?<=[.!?])\s+")


def sentence_splitter():
    """(name, function) splitting a text into sentences for ROUGE-Lsum."""
    try:
        import nltk

        nltk.data.find("tokenizers/punkt")
        return "nltk-punkt", nltk.sent_tokenize
    except (ImportError, LookupError):
        return "rule: split after [.!?] + space", lambda t: [s for s in _SENT_END.split(t) if s]


def rouge(hyps: Sequence[str], refs: Sequence[str], use_stemmer: bool = True,
          rouge_types: Sequence[str] = ROUGE_TYPES) -> Dict[str, object]:
    """Mean precision / recall / F1 (in %) of rouge-score over the pairs, plus the splitter used."""
    if len(hyps) != len(refs):
        raise ScoringError(f"{len(hyps)} hypotheses but {len(refs)} references")
    if not hyps:
        raise ScoringError("nothing to score")
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(rouge_types), use_stemmer=use_stemmer)
    split_name, split = sentence_splitter()
    sums = {t: [0.0, 0.0, 0.0] for t in rouge_types}
    for h, r in zip(hyps, refs):
        if "rougeLsum" in rouge_types:
            h_, r_ = "\n".join(split(h)), "\n".join(split(r))
        else:
            h_, r_ = h, r
        s = scorer.score(r_, h_)  # rouge-score takes (target, prediction)
        for t in rouge_types:
            sums[t][0] += s[t].precision
            sums[t][1] += s[t].recall
            sums[t][2] += s[t].fmeasure
    n = len(hyps)
    out: Dict[str, object] = {}
    for t in rouge_types:
        p, r, f = (100.0 * x / n for x in sums[t])
        out[t] = round(f, 4)
        out[f"{t}_precision"] = round(p, 4)
        out[f"{t}_recall"] = round(r, 4)
    out["rouge_use_stemmer"] = use_stemmer
    out["rougeLsum_sentence_splitter"] = split_name
    return out


# ----------------------------------------------------------------- Romanian
# normalise-romanian.py (WMT16): s/t with cedilla -> s/t with comma below
_RO_NORMALISE = str.maketrans({"\u015e": "\u0218", "\u015f": "\u0219", "\u0162": "\u021a", "\u0163": "\u021b"})
# remove-diacritics.py (WMT16; assumes the comma forms above)
_RO_DIACRITICS = str.maketrans({"\u0218": "S", "\u0219": "s", "\u021a": "T", "\u021b": "t",
                                "\u0102": "A", "\u0103": "a", "\u00c2": "A", "\u00e2": "a",
                                "\u00ce": "I", "\u00ee": "i"})


def normalise_romanian(text: str) -> str:
    return text.translate(_RO_NORMALISE)


def remove_diacritics(text: str) -> str:
    return text.translate(_RO_DIACRITICS)


class RomanianPostprocessor:
    """The WMT16 en-ro scoring pipeline, applied to hypotheses and references alike."""

    def __init__(self, lang: str = "ro"):
        import regex
        from sacremoses import MosesPunctNormalizer, MosesTokenizer

        self.normalizer = MosesPunctNormalizer(lang=lang, pre_replace_unicode_punct=True, perl_parity=True)
        self.tokenizer = MosesTokenizer(lang=lang)
        self._control = regex.compile(r"\p{C}")

    def __call__(self, text: str) -> str:
        text = self.normalizer.normalize(text)            # replace-unicode-punctuation + normalize-punctuation
        text = self._control.sub(" ", text)               # remove-non-printing-char.perl: \p{C} -> space
        text = remove_diacritics(normalise_romanian(text))
        return self.tokenizer.tokenize(text, escape=False, return_str=True)  # tokenizer.perl -no-escape -l ro


def bleu(hyps: Sequence[str], refs: Sequence[str], romanian: bool = True) -> Dict[str, object]:
    if len(hyps) != len(refs):
        raise ScoringError(f"{len(hyps)} hypotheses but {len(refs)} references")
    if not hyps:
        raise ScoringError("nothing to score")
    from sacrebleu.metrics import BLEU

    metric = BLEU()
    res = metric.corpus_score(list(hyps), [list(refs)])
    out: Dict[str, object] = {"bleu": round(res.score, 4), "bleu_signature": str(metric.get_signature()),
                              "bleu_detail": str(res)}
    if romanian:
        post = RomanianPostprocessor("ro")
        h = [post(x) for x in hyps]
        r = [post(x) for x in refs]
        metric = BLEU(tokenize="none")
        res = metric.corpus_score(h, [r])
        out.update({"bleu_wmt16_ro": round(res.score, 4), "bleu_wmt16_ro_signature": str(metric.get_signature()),
                    "bleu_wmt16_ro_detail": str(res)})
    return out


# ----------------------------------------------------------------- output
def format_table(title: str, rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = [title]
    for k, r in enumerate(rows):
        lines.append("| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |")
        if k == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def write_json(path: str, result: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, path)


def _hyps_from_args(a, detok) -> List[str]:
    refs_n = len(read_lines(a.refs))
    if a.hyps:
        return read_lines(a.hyps)
    return detok(extract_hypotheses(a.generate, refs_n))


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = cli.parser("unifairseq-score", __doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("rouge", "bleu"):
        p = sub.add_parser(name)
        src = p.add_mutually_exclusive_group(required=True)
        src.add_argument("--generate", help="fairseq-generate output (H- lines)")
        src.add_argument("--hyps", help="already detokenized hypotheses, one per line")
        p.add_argument("--refs", required=True, help="raw references, one per line")
        p.add_argument("--json", required=True, help="write the scores here")
        p.add_argument("--hyps-out", help="write the detokenized hypotheses here")
        p.add_argument("--meta", default="{}", help="JSON object merged into the output (decoding settings, ...)")
        if name == "rouge":
            p.add_argument("--encoder-json")
            p.add_argument("--vocab-bpe")
            p.add_argument("--no-stemmer", action="store_true")
        else:
            p.add_argument("--spm-model", help="sentencepiece model (default: fairseq's --remove-bpe sentencepiece rule)")
            p.add_argument("--strip", nargs="*", default=["[ro_RO]", "[en_XX]"], help="symbols to drop (language tags)")
            p.add_argument("--no-romanian", action="store_true", help="skip the WMT16 Romanian BLEU")
    a = ap.parse_args(argv)
    try:
        meta = json.loads(a.meta)
        if a.cmd == "rouge":
            hyps = _hyps_from_args(a, lambda ls: gpt2_detokenize(ls, a.encoder_json, a.vocab_bpe))
            refs = read_lines(a.refs)
            scores = rouge(hyps, refs, use_stemmer=not a.no_stemmer)
            rows = [("metric", "score")] + [(t.replace("rouge", "ROUGE-"), f"{scores[t]:.2f}") for t in ROUGE_TYPES]
            title = f"XSum-style ROUGE F1 (rouge-score, stemmer={'on' if not a.no_stemmer else 'off'}), {len(hyps)} examples"
        else:
            hyps = _hyps_from_args(a, lambda ls: spm_detokenize(ls, a.spm_model, a.strip))
            refs = read_lines(a.refs)
            scores = bleu(hyps, refs, romanian=not a.no_romanian)
            rows = [("metric", "score"), ("BLEU (sacreBLEU, detokenized, 13a)", f"{scores['bleu']:.2f}")]
            if "bleu_wmt16_ro" in scores:
                rows.append(("BLEU (WMT16 ro normalization + no diacritics, tokenize=none) [paper]",
                             f"{scores['bleu_wmt16_ro']:.2f}"))
            title = f"en-ro BLEU, {len(hyps)} sentences"
    except (ScoringError, json.JSONDecodeError) as e:
        return cli.error(f"unifairseq-score {a.cmd}", e)
    if a.hyps_out:
        os.makedirs(os.path.dirname(os.path.abspath(a.hyps_out)), exist_ok=True)
        with open(a.hyps_out, "w", encoding="utf-8") as f:
            f.writelines(h + "\n" for h in hyps)
    result = {"n": len(hyps), **scores, "references": os.path.abspath(a.refs),
              "hypotheses": os.path.abspath(a.hyps_out or a.hyps or "") if (a.hyps_out or a.hyps) else None,
              "generate": os.path.abspath(a.generate) if a.generate else None, **meta}
    write_json(a.json, result)
    print(format_table(title, rows))
    print(f"(written to {a.json})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
