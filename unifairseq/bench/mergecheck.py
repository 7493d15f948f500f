"""Does merged LoRA decode what unmerged LoRA decodes?

The worker decodes a LoRA model unmerged, merges every LoRA site (``DeltaLinear.merge()``), decodes
again, and scores the unmerged decode's hypotheses with the merged model by teacher forcing. Two
things are checked, per sentence, on the top hypothesis of the beam:

- the model check (immune to ties): the merged model's log-probability of every token of the
  unmerged hypothesis equals the unmerged decode's own positional score within ``tol``. A wrong merge
  (a missing scaling, a transposed product, a delta added twice) moves these by far more.
- the search check: the merged decode returns the same tokens, with positional scores within ``tol``.
  Merging changes the float rounding (W x + s B A x against (W + s B A) x), so two candidates that
  tie to ~1e-6 may swap; tokens that differ are accepted as such a tie flip only when the model check
  passes for that sentence (the merged model scores the unmerged hypothesis as the unmerged model did).

``compare_decodes`` is the whole decision; it takes plain lists so that it can be tested on its own.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

# log-probability (nats) per token. fp32 rounding measured here: <= 4e-6 (bart_base shapes, and tiny);
# a merge that adds 1.05x the delta: 7e-3 on bart_base, 3e-4 on --tiny. fp16 (not measured): looser.
TOL = 1e-4
TOL_FP16 = 2e-2


def _max_abs_diff(a: Sequence[float], b: Sequence[float]) -> float:
    if len(a) != len(b):
        return float("inf")
    return max((abs(x - y) for x, y in zip(a, b)), default=0.0)


def compare_decodes(unmerged: List[dict], merged: List[dict], rescored: Optional[List[List[float]]] = None,
                    tol: float = TOL) -> dict:
    """Compare two decodes of the same sentences.

    ``unmerged`` and ``merged``: one dict per sentence, ``tokens`` (ids) and ``positional_scores``
    (log-probability of each token) of the top hypothesis. ``rescored``: per sentence, the merged
    model's teacher-forced log-probabilities of the unmerged hypothesis' tokens (None: not available,
    then differing tokens are a failure). Returns ``ok`` and the evidence.
    """
    out = dict(ok=True, tol=tol, sentences=len(unmerged), same_tokens=0, tie_flips=0,
               max_score_diff=0.0, max_rescore_diff=None, failures=[])
    if len(merged) != len(unmerged) or (rescored is not None and len(rescored) != len(unmerged)):
        out["ok"] = False
        out["failures"].append(f"{len(unmerged)} unmerged, {len(merged)} merged, "
                               f"{'-' if rescored is None else len(rescored)} rescored sentences")
        return out
    for i, (u, m) in enumerate(zip(unmerged, merged)):
        model_ok = None
        if rescored is not None:
            d = _max_abs_diff(u["positional_scores"], rescored[i])
            out["max_rescore_diff"] = max(out["max_rescore_diff"] or 0.0, d)
            model_ok = d <= tol
            if not model_ok:
                out["failures"].append(f"sentence {i}: the merged model scores the unmerged hypothesis "
                                       f"differently (max |diff| {d:.3g} > {tol:g})")
        if list(u["tokens"]) == list(m["tokens"]):
            out["same_tokens"] += 1
            d = _max_abs_diff(u["positional_scores"], m["positional_scores"])
            out["max_score_diff"] = max(out["max_score_diff"], d)
            if d > tol:
                out["failures"].append(f"sentence {i}: same tokens, positional scores differ "
                                       f"(max |diff| {d:.3g} > {tol:g})")
        elif model_ok:
            out["tie_flips"] += 1
        else:
            first = next((j for j, (a, b) in enumerate(zip(u["tokens"], m["tokens"])) if a != b),
                         min(len(u["tokens"]), len(m["tokens"])))
            out["failures"].append(f"sentence {i}: merged hypothesis differs from token {first} on"
                                   + ("" if rescored is not None else " (no rescoring to tell a tie)"))
    out["ok"] = not out["failures"]
    return out


def top_hypotheses(out) -> List[dict]:
    """SequenceGenerator output -> per sentence the top hypothesis as plain lists."""
    return [dict(tokens=hyps[0]["tokens"].tolist(), positional_scores=hyps[0]["positional_scores"].tolist(),
                 score=float(hyps[0]["score"])) for hyps in out]


def forced_scores(model, src_tokens, src_lengths, hyps: List[dict], eos: int) -> List[List[float]]:
    """Teacher-forced log-probability of each hypothesis token (all hypotheses of one length)."""
    import torch

    tgt = torch.tensor([h["tokens"] for h in hyps], dtype=torch.long, device=src_tokens.device)
    prev = torch.cat([torch.full_like(tgt[:, :1], eos), tgt[:, :-1]], dim=1)
    with torch.no_grad():
        net_output = model(src_tokens, src_lengths, prev)
        lprobs = model.get_normalized_probs(net_output, log_probs=True).float()
    return lprobs.gather(-1, tgt.unsqueeze(-1)).squeeze(-1).tolist()
