"""The model side of the server: one hub (one base, many deltas), its text encoding, the batched forward
of a list of jobs, and adding or removing deltas. Only the scheduler thread calls `run`, `add` and
`remove`: a fairseq model is not thread-safe, so every forward and every change happens on that thread,
between batches (scheduler.Scheduler.call). The request handlers call only the read-only checks
(`encode`, `check_tokens`, `has`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch
from fairseq.data import Dictionary

from unifairseq.data.bpe import resolve_bpe_files
from unifairseq.errors import UnifairseqError
from unifairseq.fairseq.bank import load_hub
from unifairseq.fairseq.model_bank import NAME_RE

HEAD = "sentence_classification_head"  # fairseq's default classification head name


class ServeError(UnifairseqError):
    """Bad server configuration or a bad delta, in one line."""


class InputError(ValueError):
    """A request the client must change: which field, and why (answered 4xx, never 500)."""

    def __init__(self, field_name: str, message: str, status: int = 400):
        super().__init__(message)
        self.field = field_name
        self.status = status


@dataclass
class DeltaInfo:
    name: str
    method: str
    parameters: int
    bytes: int
    base_fingerprint: Optional[str]
    source: str
    heads: Dict[str, int] = field(default_factory=dict)  # RoBERTa: head name -> classes


def resolve_in(dirs: Sequence[str], name: str) -> str:
    """A delta by name inside the --delta-dir folders only: DIR/NAME (a delta folder) or DIR/NAME.pt.
    The name is never a path (no separators, no dots), so nothing outside those folders is reachable."""
    if not name or not NAME_RE.match(name):
        raise InputError("name", f"delta name {name!r}: use letters, digits, '_' or '-'")
    for d in dirs:
        for cand in (os.path.join(d, name), os.path.join(d, name + ".pt")):
            real, root = os.path.realpath(cand), os.path.realpath(d)
            if os.path.commonpath([real, root]) == root and os.path.exists(real):
                return real
    where = ", ".join(dirs) or "no --delta-dir was given"
    raise InputError("name", f"no delta {name!r} in the delta folders ({where}): put NAME/ or NAME.pt there",
                     status=404)


def _label_dictionary(path: Optional[str], data: Optional[str]):
    """fairseq's label dictionary: --label-dict FILE, else DATA/../label/dict.txt (sentence_prediction's
    layout: DATA is its input0 folder), else none (labels are the class indices)."""
    if path is None and data:
        guess = os.path.join(os.path.dirname(os.path.abspath(data)), "label", "dict.txt")
        path = guess if os.path.isfile(guess) else None
    if path is None:
        return None
    if not os.path.isfile(path):
        raise ServeError(f"--label-dict {path!r} does not exist; give the label folder's dict.txt")
    return Dictionary.load(path)


class Engine:
    """One loaded hub and what the server needs of it."""

    def __init__(self, hub, delta_dirs: Sequence[str] = (), max_input_tokens: int = 512):
        self.hub = hub
        self.family = "roberta" if hasattr(hub, "predict") and not hasattr(hub.model, "decoder") else "bart"
        self.delta_dirs = [os.path.abspath(d) for d in delta_dirs]
        self.dictionary = hub.task.source_dictionary
        limit = hub.model.max_positions()
        limit = limit[0] if isinstance(limit, tuple) else limit
        self.max_input_tokens = min(max_input_tokens, int(limit)) if limit else max_input_tokens
        self.labels = getattr(hub.task, "label_dictionary", None)  # class index -> label (RoBERTa)
        self.infos: Dict[str, DeltaInfo] = {}
        self._names = frozenset()  # what requests may name; swapped whole, read without a lock
        # one forward per scheduled batch: the hub must not split or reorder it by its own sizes
        self.hub.cfg.dataset.max_tokens = None
        self.hub.cfg.dataset.batch_size = None

    @classmethod
    def load(cls, base: str, deltas: Dict[str, str], data: Optional[str], delta_dirs: Sequence[str] = (),
             bpe: str = "gpt2", max_input_tokens: int = 512, label_dict: Optional[str] = None,
             **overrides) -> "Engine":
        if bpe == "gpt2":
            enc, voc = resolve_bpe_files(overrides.pop("gpt2_encoder_json", None),
                                         overrides.pop("gpt2_vocab_bpe", None))
            overrides.update(bpe="gpt2", gpt2_encoder_json=enc, gpt2_vocab_bpe=voc)
        elif bpe == "sentencepiece":  # mBART's text encoding
            model = overrides.pop("sentencepiece_model", None)
            if not model or not os.path.isfile(model):
                raise ServeError("--bpe sentencepiece needs --sentencepiece-model FILE (the base's "
                                 f"sentence.bpe.model); {model!r} is not a file")
            overrides.update(bpe="sentencepiece", sentencepiece_model=model)
        else:
            overrides.update(bpe=None)
        try:
            hub = load_hub(base, {}, data=data, **overrides)
        except UnifairseqError as e:  # the base not found (BankError), or not a base (DeltaCheckpointError)
            raise ServeError(str(e)) from None
        hub.eval()
        engine = cls(hub, delta_dirs, max_input_tokens)
        if engine.family == "roberta":
            engine.labels = _label_dictionary(label_dict, data) or engine.labels
        for name, source in deltas.items():
            try:
                engine.add(name, source or resolve_in(engine.delta_dirs, name))
            except InputError as e:
                raise ServeError(f"--delta {name}: {e}") from None
        return engine

    # ------------------------------------------------------------ reads (any thread)
    @property
    def names(self) -> frozenset:
        return self._names

    def has(self, name: Optional[str]) -> bool:
        return name is None or name in self._names

    def heads(self, name: Optional[str]) -> Dict[str, int]:
        if name is None:
            heads = getattr(self.hub.model, "classification_heads", {}) or {}
            return {h: int(m.out_proj.weight.size(0)) for h, m in heads.items()}
        info = self.infos.get(name)
        return dict(info.heads) if info else {}

    def encode(self, text: str) -> torch.Tensor:
        return self.hub.encode(text)

    def check_tokens(self, tokens: List[int], where: str) -> torch.Tensor:
        if not tokens:
            raise InputError(where, f"{where} is empty; give at least one token id")
        n = len(self.dictionary)
        bad = next((t for t in tokens if not 0 <= t < n), None)
        if bad is not None:
            raise InputError(where, f"{where}: token id {bad} is outside the dictionary (0..{n - 1})")
        return torch.tensor(tokens, dtype=torch.long)

    def check_length(self, tokens: torch.Tensor, where: str) -> None:
        if tokens.numel() > self.max_input_tokens:
            raise InputError(where, f"{where} is {tokens.numel()} tokens; this server takes at most "
                             f"{self.max_input_tokens} (--max-input-tokens, and the model's positions)", status=413)

    def decode(self, tokens: torch.Tensor) -> str:
        return self.hub.decode(tokens)

    def label(self, index: int) -> str:
        d = self.labels
        if d is None or index + d.nspecial >= len(d):
            return str(index)
        return d.string([index + d.nspecial])

    # ------------------------------------------------------------ the scheduler thread only
    @torch.no_grad()
    def generate(self, tokens: List[torch.Tensor], deltas: List[Optional[str]], beam: int, max_len: int,
                 lenpen: float, min_len: int = 1) -> List[List[dict]]:
        return self.hub.generate(tokens, beam=beam, max_len_a=0, max_len_b=max_len, lenpen=lenpen,
                                 min_len=min_len, deltas=deltas)

    @torch.no_grad()
    def classify(self, tokens: List[torch.Tensor], deltas: List[Optional[str]], head: str) -> torch.Tensor:
        pad = self.dictionary.pad()
        width = max(t.numel() for t in tokens)
        batch = torch.full((len(tokens), width), pad, dtype=torch.long)
        for i, t in enumerate(tokens):
            batch[i, :t.numel()] = t
        return self.hub.predict(head, batch, deltas=deltas)

    def add(self, name: str, source: str) -> DeltaInfo:
        """Validate and add a delta (hub.add_delta checks fingerprint, dictionary and shapes); it is visible to
        requests only once it is in."""
        try:
            self.hub.add_delta(name, source)
        except UnifairseqError as e:  # BankError; DeltaCheckpointError (another dictionary)
            raise InputError("name", str(e), status=409 if "already" in str(e) else 422) from None
        i = self.hub.delta_info(name)
        info = DeltaInfo(name, i["method"], i["parameters"], i["bytes"], i["base_fingerprint"],
                         os.path.basename(os.path.normpath(source)), i["heads"])
        self.infos[name] = info
        self._names = frozenset(self.infos)
        return info

    def remove(self, name: str) -> None:
        if name not in self.infos:
            raise InputError("name", f"no delta named {name!r} is served", status=404)
        self.infos.pop(name)
        self._names = frozenset(self.infos)  # new requests refused first; queued ones fail at the batch
        self.hub.remove_delta(name)
