"""The demo's methods and their settings (the table in the README), and the run-size defaults."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List

BATCH = 32
MAM_GAP = 1.5  # accuracy points: the quality bar for MAM against full fine-tuning


@dataclass
class Method:
    name: str          # short key (--methods)
    label: str         # table label
    arch: str
    lr: float
    max_update: int
    flags: List[str] = field(default_factory=list)   # method-specific fairseq-train flags
    note: str = ""     # what was chosen, for the table
    s_per_update: float = 0.6  # seconds per update of 32, one thread, 2 runs on 2 idle cores (the estimate)

    @property
    def is_delta(self) -> bool:
        return self.arch != "roberta_base"


# Settings for the budget: two runs at a time on 2 CPU cores, each method about the same training time
# (a full fine-tuning update costs about 1.5x a delta update: it back-propagates into every weight and
# Adam updates 22.9M parameters). Delta methods take a 10-50x larger learning rate than full fine-tuning.
# Every run trains exactly its max_update updates, however busy the machine: the same seed and update
# counts give the same accuracies.
METHODS: Dict[str, Method] = {m.name: m for m in [
    Method("full", "Full fine-tuning", "roberta_base", 1e-4, 220,
           note="all weights", s_per_update=0.93),
    Method("mam", "MAM adapter", "mam_roberta_base", 2e-3, 340, ["--mid-dim", "512", "--ffn-bn", "64"],
           note="prefix l=16 (reparametrization MLP, mid 512) + scaled parallel FFN adapter r=64, s=2",
           s_per_update=0.64),
    Method("lora", "LoRA", "lora_attn_roberta_base", 2e-3, 300,
           ["--attn-bn", "8", "--lora-alpha", "16", "--lora-dropout", "0.0"],
           note="on W_q and W_v, rank r=8, alpha=16"),
    Method("prefix", "Prefix tuning", "prefix_roberta_base", 3e-3, 300,
           ["--attn-bn", "16", "--mid-dim", "512"],
           note="l=16, reparametrization MLP mid 512"),
    Method("pfeiffer", "Pfeiffer adapter", "pfeiffer_roberta_base", 1e-3, 300, ["--ffn-bn", "64"],
           note="sequential adapter after the FFN, r=64"),
    Method("bitfit", "BitFit", "bitfit_roberta_base", 5e-3, 300,
           note="all bias terms"),
]}
QUICK_METHODS = ("full", "mam")
QUICK_UPDATES = 24  # 3 epochs of the 256 examples: 16 left full FT 3 points above the majority class at seed 2
QUICK_TRAIN = 256
DEFAULT_TRAIN = 24000
DEFAULT_BUDGET = 18.0  # minutes, the whole demo
QUICK_BUDGET = 4.0
