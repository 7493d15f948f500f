"""The one list of named methods (presets): `--arch <preset>_<family>_<size>`, the count and bench
tables and the scripts' usage texts all read `PRESETS`.

A preset is a set of flag values, not a code path. Each method module declares its own presets
(the paper's numbers: Table 1/3/4 and the reference scripts); the MAM adapter is a union of two of
them -- prefix tuning (l=30) at attention and the scaled parallel adapter (r=512, s=4) at the FFN --
as AdapterHub's ConfigUnion.
"""
from __future__ import annotations

from typing import Dict

from unifairseq.core.methods import METHODS


def union(*presets: dict) -> dict:
    """Presets on different sites combined; two values for one flag are a mistake."""
    out: dict = {}
    for p in presets:
        for k, v in p.items():
            assert out.get(k, v) == v, f"presets disagree on {k}: {out[k]!r} vs {v!r}"
            out[k] = v
    return out


_ALL = {name: p for m in METHODS.values() for name, p in m.presets.items()}

PRESETS: Dict[str, dict] = {
    # prefix l=30 (mid_dim 800) + scaled parallel FFN adapter r=512, s=4, LoRA-style init, no layer norm
    "mam": union({**_ALL["prefix"], "attn_bn": 30}, {**_ALL["scaled_pa"], "ffn_adapter_layernorm_option": "none"}),
    **_ALL,
}

if __name__ == "__main__":  # the scripts' usage texts: the preset names, space-separated
    print(" ".join(PRESETS))
