"""`--task translation_mbart`: fairseq's `translation_from_pretrained_bart` (mBART fine-tuning:
`--langs`, language tags appended to source and target, generation ending at the target tag)
with fairseq 0.12's bugs fixed, so the mBART recipe runs:

* the task reads `self.args`, which fairseq 0.12's FairseqTask no longer sets (training fails in
  `load_dataset`, generation in `build_generator`: "'TranslationFromPretrainedBARTTask' object has
  no attribute 'args'", facebookresearch/fairseq#3169, #4479); here `self.args` is the parsed
  argument namespace the task is built from;
* `--no-repeat-ngram-size` without fairseq's CUDA kernel blocks nothing (fairseq#5206); the
  generator gets `NGramRepeatBlockFixed` (see unifairseq.fairseq.tasks.summarization);
* with `--eval-bleu`, the generator built for validation leaves the beam size of fairseq's
  beamable cross-attention set on the model being trained (plain mBART training then fails);
  here it is set only while a validation batch is decoded (`set_beam_size`), and the language
  tags are left out of the validation BLEU (fairseq counts the `[ro_RO]` ending hypothesis and
  reference as a matched token).

Everything else, flags included, is fairseq's task.
"""
import logging

from fairseq import utils
from fairseq.tasks import FairseqTask, register_task
from fairseq.tasks.translation import EVAL_BLEU_ORDER
from fairseq.tasks.translation_from_pretrained_bart import TranslationFromPretrainedBARTTask

from unifairseq.data.check import check_task_split
from unifairseq.fairseq.batching import keep_every_batch, no_dropped_batches
from unifairseq.fairseq.tasks.summarization import fix_ngram_blocker, set_beam_size

logger = logging.getLogger(__name__)


@register_task("translation_mbart")
class TranslationMBARTTask(TranslationFromPretrainedBARTTask):
    @staticmethod
    def add_args(parser):
        TranslationFromPretrainedBARTTask.add_args(parser)
        keep_every_batch(parser)  # default --required-batch-size-multiple 1 (unifairseq/fairseq/batching.py)

    def __init__(self, args, src_dict, tgt_dict):
        self.args = args
        super().__init__(args, src_dict, tgt_dict)
        no_dropped_batches(self)  # an explicit multiple > 1 would drop the last batch of a split

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        # missing / malformed / empty data: one clear message; the source gets a language token
        check_task_split(self.cfg, split, epoch, src_extra=1)
        return super().load_dataset(split, epoch=epoch, combine=combine, **kwargs)

    def build_generator(self, models, args, **kwargs):
        return fix_ngram_blocker(super().build_generator(models, args, **kwargs))

    def build_model(self, cfg, from_checkpoint=False):
        model = super().build_model(cfg, from_checkpoint)
        if getattr(self, "sequence_generator", None) is not None:  # --eval-bleu
            set_beam_size(self.sequence_generator, 1)
        return model

    def valid_step(self, sample, model, criterion):
        """TranslationTask.valid_step with the decoding beam set only while decoding."""
        loss, sample_size, logging_output = FairseqTask.valid_step(self, sample, model, criterion)
        if self.cfg.eval_bleu:
            gen = self.sequence_generator
            set_beam_size(gen, gen.beam_size)
            try:
                bleu = self._inference_with_bleu(gen, sample, model)
            finally:
                set_beam_size(gen, 1)
            logging_output["_bleu_sys_len"] = bleu.sys_len
            logging_output["_bleu_ref_len"] = bleu.ref_len
            assert len(bleu.counts) == EVAL_BLEU_ORDER
            for i in range(EVAL_BLEU_ORDER):
                logging_output["_bleu_counts_" + str(i)] = bleu.counts[i]
                logging_output["_bleu_totals_" + str(i)] = bleu.totals[i]
        return loss, sample_size, logging_output

    def _inference_with_bleu(self, generator, sample, model):
        """fairseq's, without the language tags: hypotheses end with the target tag (the
        generator's EOS) and references carry it too, which would count as a matched token."""
        import sacrebleu

        ignore = {self.tgt_dict.index(f"[{lang}]") for lang in self.langs}

        def decode(toks, escape_unk=False):
            s = self.tgt_dict.string(toks.int().cpu(), self.cfg.eval_bleu_remove_bpe,
                                     unk_string=("UNKNOWNTOKENINREF" if escape_unk else "UNKNOWNTOKENINHYP"),
                                     extra_symbols_to_ignore=ignore)
            return self.tokenizer.decode(s) if self.tokenizer else s

        gen_out = self.inference_step(generator, [model], sample, prefix_tokens=None)
        hyps, refs = [], []
        for i in range(len(gen_out)):
            hyps.append(decode(gen_out[i][0]["tokens"]))
            refs.append(decode(utils.strip_pad(sample["target"][i], self.tgt_dict.pad()), escape_unk=True))
        if self.cfg.eval_bleu_print_samples:
            logger.info("example hypothesis: " + hyps[0])
            logger.info("example reference: " + refs[0])
        if self.cfg.eval_tokenized_bleu:
            return sacrebleu.corpus_bleu(hyps, [refs], tokenize="none")
        return sacrebleu.corpus_bleu(hyps, [refs])
