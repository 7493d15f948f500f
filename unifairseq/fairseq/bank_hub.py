"""The hub interface of a bank: fairseq's BART hub with a delta per sentence.

    hub = BankHubInterface.from_model(model, task)           # model: a bank_bart model (fairseq.bank.load_bank)
    hub.translate(["a b c", "d e"], deltas=["sum", None], beam=4)   # None: model.bank.default

`deltas` names one bank delta per sentence; the ids travel as sample["net_input"]["delta_ids"]
through fairseq's own batching (each batch gets the ids of its sentences by their ids), so
hypotheses come back in the input order as fairseq's hub returns them. Without a BPE in the config
sentences are the dictionary's own space-separated symbols.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from fairseq.hub_utils import GeneratorHubInterface
from fairseq.models.bart.hub_interface import BARTHubInterface

from unifairseq.core.bank import by_delta


class _SymbolsBPE:
    """No BPE: sentences are already the dictionary's symbols."""

    def encode(self, x: str) -> str:
        return x

    def decode(self, x: str) -> str:
        return x


class BankHubInterface(BARTHubInterface):
    def __init__(self, cfg, task, model):
        if cfg is None:
            cfg = _default_cfg(model)
        super().__init__(cfg, task, model)
        if self.bpe is None:
            self.bpe = _SymbolsBPE()
        self._ids: Optional[torch.Tensor] = None

    @classmethod
    def from_model(cls, model, task, cfg=None) -> "BankHubInterface":
        return cls(cfg, task, model)

    def _delta_ids(self, n: int, deltas: Optional[Sequence[Optional[str]]]) -> Optional[torch.Tensor]:
        bank = getattr(self.model, "bank", None)
        if bank is None:
            if deltas is not None and any(d is not None for d in deltas):
                raise ValueError("deltas=... needs a bank model (unifairseq.fairseq.bank.load_bank)")
            return None
        deltas = list(deltas) if deltas is not None else [None] * n
        if len(deltas) != n:
            raise ValueError(f"deltas has {len(deltas)} entries for {n} sentences; give one delta name (or None) each")
        return bank.ids(deltas)

    def sample(self, sentences, beam: int = 1, verbose: bool = False, deltas=None, **kwargs):
        if isinstance(sentences, str):
            one = [deltas] if deltas is None or isinstance(deltas, str) else deltas
            return self.sample([sentences], beam=beam, verbose=verbose, deltas=one, **kwargs)[0]
        return self._with_ids(len(sentences), deltas,
                              lambda: super(BankHubInterface, self).sample(sentences, beam, verbose, **kwargs))

    def translate(self, sentences, beam: int = 5, verbose: bool = False, deltas=None, **kwargs):
        return self.sample(sentences, beam=beam, verbose=verbose, deltas=deltas, **kwargs)

    def generate(self, tokenized_sentences, *args, deltas=None, **kwargs):
        if deltas is None and self._ids is not None:
            return super().generate(tokenized_sentences, *args, **kwargs)
        return self._with_ids(len(tokenized_sentences), deltas,
                              lambda: super(BankHubInterface, self).generate(tokenized_sentences, *args, **kwargs))

    def _with_ids(self, n: int, deltas, run):
        self._ids = self._delta_ids(n, deltas)
        try:
            return run()
        finally:
            self._ids = None

    def _build_batches(self, tokens: List[torch.LongTensor], skip_invalid_size_inputs: bool):
        # BART's hub batches twice: its generate batches the sentences, then hands each batch's padded
        # rows to the generic generate, which batches those rows again (ids = row numbers). So each
        # level maps its batch ids through the ids of its own input, and hands them to the level below.
        ids = self._ids
        for batch in GeneratorHubInterface._build_batches(self, tokens, skip_invalid_size_inputs):
            if ids is not None:
                batch["net_input"]["delta_ids"] = ids.index_select(0, batch["id"].cpu())
                # ordered by delta (core/bank.by_delta), "id" included: fairseq's hub puts results back
                # in input order by those ids
                batch, _ = by_delta(batch)
                self._ids = batch["net_input"]["delta_ids"]
            yield batch
        self._ids = ids


def _default_cfg(model):
    """A fairseq config from the model's own args (what from_pretrained would have loaded)."""
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    return convert_namespace_to_omegaconf(model.args)
