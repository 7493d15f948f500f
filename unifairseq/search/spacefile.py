"""--space FILE.yaml: a custom grid of points, written like the presets' flags."""
from __future__ import annotations

import itertools
from typing import Dict, List

from unifairseq.core.config import DeltaConfigError
from unifairseq.core.methods import METHODS, ModelShape
from unifairseq.core.plan import DeltaPlan
from unifairseq.core.presets import PRESETS

from . import space as sp
from .errors import SearchError


def file_grid(path: str, shape: ModelShape) -> List[sp.Point]:
    """A custom grid, written like the presets' flags (DeltaConfig field names, or a preset name):

        points:
          - preset: mam               # optional: start from a preset's flags
            ffn_bn: [64, 128]         # a list is one grid axis
          - attn_mode: lora
            attn_bn: [4, 8, 16]
    """
    import yaml  # deferred: only --space FILE needs it

    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except OSError as e:
        raise SearchError(f"--space {path}: cannot read it ({e.strerror}); give a YAML file or 'paper'") from None
    except yaml.YAMLError as e:
        raise SearchError(f"--space {path}: not valid YAML ({str(e).splitlines()[0]})") from None
    entries = doc.get("points") if isinstance(doc, dict) else doc
    if not isinstance(entries, list) or not entries:
        raise SearchError(f"--space {path}: expected a list of points under 'points:' (see docs/search.md)")
    points: List[sp.Point] = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            raise SearchError(f"--space {path}: point {i + 1} is not a mapping of flags")
        e = dict(e)
        base: Dict[str, object] = {}
        if "preset" in e:
            name = e.pop("preset")
            if name not in PRESETS:
                raise SearchError(f"--space {path}: point {i + 1}: unknown method (preset) {name!r}; "
                                  f"choose one of {', '.join(PRESETS)}")
            base = dict(PRESETS[name])
        for k in e:
            key = k.replace("-", "_").lstrip("_")
            if key not in sp.FLAG_NAMES:
                raise SearchError(f"--space {path}: point {i + 1}: unknown flag {k!r}; "
                                  f"the flags are {', '.join(sp.FLAG_NAMES)} (and preset)")
        axes = {k.replace("-", "_").lstrip("_"): (v if isinstance(v, list) else [v]) for k, v in e.items()}
        for values in itertools.product(*axes.values()):
            flags = {**base, **dict(zip(axes, values))}
            for k in ("attn_mode", "ffn_mode"):
                mode = flags.get(k, "none")
                allowed = ("none",) + tuple(dict.fromkeys(v for m in METHODS.values() for v in getattr(m, k + "s")))
                if mode not in allowed:
                    raise SearchError(f"--space {path}: point {i + 1}: unknown method {sp.flag(k)} {mode!r}; "
                                      f"choose one of {', '.join(allowed)}")
            try:
                n = sp.stored_count(flags, shape)
            except DeltaConfigError as err:
                raise SearchError(f"--space {path}: point {i + 1}: {err}") from None
            method = "+".join(dict.fromkeys(m.name for m in DeltaPlan(sp.config(flags)).methods))
            label = " ".join(f"{k}={v}" for k, v in flags.items() if k.endswith(("_mode", "_option", "_bn")))
            points.append(sp.Point(label, method, flags, "file", n))
    return points
