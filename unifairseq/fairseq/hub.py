"""The hub of every delta model: fairseq's BART and RoBERTa hubs, with a delta per sentence.

    hub = DeltaBARTModel.from_pretrained("bart.base", delta="sum_delta/")   # any delta model's hub
    hub.translate(["a b c", "d e"], beam=4)                                 # its own delta
    hub.add_delta("mt", "mt.pt")                                            # more deltas on the same base
    hub.translate(["a b c", "d e"], deltas=["mt", None], beam=4)            # None: the model's own delta

    hub = DeltaRobertaModel.from_pretrained(...)
    hub.predict("sentence_classification_head", tokens, deltas=["sst2", "mnli"])   # each row its delta's head

`deltas` names one delta per sentence. A bank model (bank_* architectures, fairseq.bank.load_bank)
holds its deltas already; a single-delta model is the case N = 1, and `add_delta` gives it more
(own_delta.serve_with_others: its own delta keeps its modules and keys, under the name `own_delta`).
The ids travel as sample["net_input"]["delta_ids"] through fairseq's own batching, each batch ordered
by delta (core/bank.by_delta), so hypotheses come back in the input order as fairseq's hub returns
them. Without a BPE in the config, sentences are the dictionary's own space-separated symbols.
"""
from __future__ import annotations

import argparse
import os
from collections import OrderedDict
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from fairseq.hub_utils import GeneratorHubInterface
from fairseq.models.bart.hub_interface import BARTHubInterface
from fairseq.models.roberta.hub_interface import RobertaHubInterface

from unifairseq.core.bank import BankError, by_delta
from unifairseq.fairseq.checkpoint_io import load_checkpoint_file, weights_only_default_off
from unifairseq.fairseq.deltafolder import hub_arguments
from unifairseq.fairseq.own_delta import serve_with_others
from unifairseq.fairseq.safe_globals import register_safe_globals

OWN_DELTA = "own"  # the name a single-delta model's own delta takes once it serves others


class _SymbolsBPE:
    """No BPE: sentences are already the dictionary's symbols."""

    def encode(self, x: str) -> str:
        return x

    def decode(self, x: str) -> str:
        return x


class DeltasHubMixin:
    """What `deltas=[...]` needs on a fairseq hub: the names, adding and removing deltas, the ids."""

    own_delta = OWN_DELTA

    def __init__(self, cfg, task, model):
        super().__init__(cfg if cfg is not None else _default_cfg(model), task, model)
        if self.bpe is None:
            self.bpe = _SymbolsBPE()
        self._ids: Optional[torch.Tensor] = None

    @classmethod
    def from_model(cls, model, task, cfg=None):
        return cls(cfg, task, model)

    @property
    def bank(self):
        return self.model.__dict__.get("bank")

    @property
    def delta_names(self) -> List[str]:
        """The deltas this hub serves (bank order); a single-delta model serves its own, `own_delta`."""
        if self.bank is not None:
            return list(self.bank.names)
        return [self.own_delta] if getattr(self.model, "delta_plan", None) is not None else []

    def add_delta(self, name: str, source) -> None:
        """Serve one more delta (a delta .pt, a delta folder, or an in-memory state) on this base: it is
        checked against the base and the dictionaries; nothing else is reloaded."""
        if self.bank is None:
            serve_with_others(self.model, self.own_delta, OrderedDict())
        self.bank.add(name, source)  # on the base's device and dtype, wherever the hub moved the model

    def remove_delta(self, name: str) -> None:
        plan = getattr(self.model, "delta_plan", None)
        if self.bank is None or (name == self.own_delta and plan is not None and not plan.empty):
            raise BankError(f"{name!r} is not a delta added to this hub ({', '.join(self.delta_names)}); only "
                            "deltas added with hub.add_delta can be removed, never the model's own")
        self.bank.remove(name)

    def delta_info(self, name: str) -> dict:
        """What a served delta is: its method, its parameters and bytes, the base fingerprint it records (the
        content fingerprint, else the plan fingerprint of older files; None for a fresh or in-memory delta)
        and its classification heads."""
        bank = self.bank
        if bank is None:
            raise BankError(f"no delta named {name!r} added to this hub; it serves {', '.join(self.delta_names)}")
        rec = bank.records.get(name) or {}
        params = list(bank.sets[bank.names[bank.index(name)]].parameters())
        return dict(name=name, method=bank.delta_config(name).describe(), parameters=sum(p.numel() for p in params),
                    bytes=bank.nbytes(name), base_fingerprint=rec.get("base_content") or rec.get("plan_fingerprint"),
                    heads=bank.heads(name))

    def _delta_ids(self, n: int, deltas: Optional[Sequence[Optional[str]]]) -> Optional[torch.Tensor]:
        if deltas is None:
            return None
        deltas = list(deltas)
        if len(deltas) != n:
            raise BankError(f"deltas has {len(deltas)} entries for {n} sentences; give one delta name (or None) each")
        if self.bank is None:
            wrong = sorted({d for d in deltas if d is not None and d != self.own_delta})
            if wrong:
                serves = ", ".join(self.delta_names) or "the plain model only"
                raise BankError(f"no delta named {wrong[0]!r}: this hub serves {serves}; add it first "
                                "(hub.add_delta(NAME, PATH))")
            return None
        return self.bank.ids(deltas)

    def _with_ids(self, n: int, deltas, run):
        self._ids = self._delta_ids(n, deltas)
        try:
            return run()
        finally:
            self._ids = None


class DeltaBARTHub(DeltasHubMixin, BARTHubInterface):
    """fairseq's BART hub; `sample/translate/generate(..., deltas=[...])`."""

    def sample(self, sentences, beam: int = 1, verbose: bool = False, deltas=None, **kwargs):
        if isinstance(sentences, str):
            one = [deltas] if deltas is None or isinstance(deltas, str) else deltas
            return self.sample([sentences], beam=beam, verbose=verbose, deltas=one, **kwargs)[0]
        return self._with_ids(len(sentences), deltas,
                              lambda: super(DeltaBARTHub, self).sample(sentences, beam, verbose, **kwargs))

    def translate(self, sentences, beam: int = 5, verbose: bool = False, deltas=None, **kwargs):
        return self.sample(sentences, beam=beam, verbose=verbose, deltas=deltas, **kwargs)

    def generate(self, tokenized_sentences, *args, deltas=None, **kwargs):
        # fairseq sets the beamable cross-attention's beam size only for beam > 1: a greedy decode after a beam
        # search on the same hub would read the encoder states with the last beam size
        beam = args[0] if args else kwargs.get("beam", 5)
        if hasattr(self.model, "set_beam_size"):
            self.model.set_beam_size(beam)
        if deltas is None and self._ids is not None:
            return super().generate(tokenized_sentences, *args, **kwargs)
        return self._with_ids(len(tokenized_sentences), deltas,
                              lambda: super(DeltaBARTHub, self).generate(tokenized_sentences, *args, **kwargs))

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


class DeltaRobertaHub(DeltasHubMixin, RobertaHubInterface):
    """fairseq's RoBERTa hub; `predict(head, tokens, deltas=[...])` gives each row its own delta's head."""

    def predict(self, head: str, tokens: torch.LongTensor, return_logits: bool = False, deltas=None):
        """tokens [B, T] (right-padded with the dictionary's pad) or [T]; deltas: one name (or None) per row.
        Rows of heads with fewer classes than the widest in the batch end in -inf logits (probability 0)."""
        tokens = tokens.unsqueeze(0) if tokens.dim() == 1 else tokens
        ids = self._delta_ids(tokens.size(0), deltas)
        if self.bank is None:
            return super().predict(head, tokens, return_logits=return_logits)
        logits, _ = self.model(tokens.to(device=self.device), features_only=True, classification_head_name=head,
                               delta_ids=None if ids is None else ids.to(self.device))
        return logits if return_logits else F.log_softmax(logits, dim=-1)


class FromPretrainedMixin:
    """`from_pretrained` of the delta models (before DeltaCheckpointMixin and fairseq's model class)."""

    @classmethod
    def from_pretrained(cls, model_name_or_path, checkpoint_file="model.pt", data_name_or_path=".",
                        delta=None, deltas=None, own_delta=None, **kwargs):
        """fairseq's hub loading, with the torch.load allow-list in place. `model_name_or_path` may be a
        base name (core/bases.py's search order); `delta=DIR` puts a shared delta folder on that base.
        Returns the hub of the model (fairseq/hub.py), whose translate/sample/predict take `deltas=[...]`;
        `deltas={NAME: PATH}` adds more deltas to serve at once, and `own_delta` names the model's own
        (default: the delta folder's name, else "own")."""
        register_safe_globals()
        model_name_or_path, checkpoint_file, data_name_or_path, kwargs = hub_arguments(
            model_name_or_path, checkpoint_file, data_name_or_path, delta, kwargs)
        if weights_only_default_off():
            # fairseq's hub reads the file with a bare torch.load, which this variable turns into a full
            # unpickle; fairseq is not patched, so the file is read here first with weights_only=True
            # (refused in one line if it would run code), and fairseq's second read then finds only
            # the allow-listed plain objects this one accepted
            for name in checkpoint_file.split(os.pathsep):
                load_checkpoint_file(os.path.join(model_name_or_path, name))
        hub = super().from_pretrained(model_name_or_path, checkpoint_file, data_name_or_path, **kwargs)
        ours = hub_class(hub.model)(hub.cfg, hub.task, hub.model)  # fairseq's prepare_for_inference_ runs once
        ours.own_delta = own_delta or (os.path.basename(os.path.normpath(delta)) if delta else OWN_DELTA)
        for name, source in (deltas or {}).items():
            ours.add_delta(name, source)
        return ours


def hub_class(model):
    """The hub of a model: BART's for encoder-decoders, RoBERTa's for encoders."""
    return DeltaBARTHub if hasattr(model, "decoder") else DeltaRobertaHub


def _default_cfg(model):
    """A fairseq config from the model's own args (what from_pretrained would have loaded)."""
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf  # fairseq's config stack, only when needed

    args = argparse.Namespace(**vars(model.args))
    # sentence_prediction's task config interpolates its criterion's fields, and a hub never uses a criterion
    args.criterion = "cross_entropy" if hasattr(model, "decoder") else "sentence_prediction"
    return convert_namespace_to_omegaconf(args)


__all__ = ["FromPretrainedMixin", "DeltaBARTHub", "DeltaRobertaHub", "DeltasHubMixin", "hub_class", "OWN_DELTA"]
