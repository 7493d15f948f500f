"""Ratios within each round, medians and spreads over rounds, targets, before/after, tables.

Every ratio is taken within one round (the method's time over the floor's time of the same round),
and what is reported is the median over rounds with the spread (min-max) beside it; a target is met
or missed on the median.
"""
from __future__ import annotations

import statistics
from typing import Dict, List, Optional

from .common import MIN_ROUNDS_FOR_TARGETS, TARGETS

# per-round numbers summarized as median + [min, max]; the rest of a worker's result is the same each round
SERIES = ("train_step_s", "train_step_cpu_s", "train_vs_full", "train_vs_frozen", "train_mem_bytes",
          "peak_mem_bytes", "decode_s", "decode_vs_base", "decode_merged_s", "decode_merged_vs_base")
CONSTANT = ("method", "arch", "trainable", "total_params", "resume_bytes", "inference_bytes")
COMPARED = ("train_step_s", "decode_s", "decode_merged_s")


def add_ratios(results: Dict[str, dict]) -> None:
    """Ratios of one round's results, against that round's full / floor / base rows (in place)."""
    full = results.get("full", {}).get("train_step_s")
    floors = [results.get(k, {}).get("train_step_s") for k in ("frozen", "frozen_2d")]
    floors = [f for f in floors if f]
    frozen = min(floors) if floors else None  # the faster floor: the stricter target
    base_dec = results.get("full", {}).get("decode_s")
    for r in results.values():
        if "train_step_s" in r:
            r["train_vs_full"] = r["train_step_s"] / full if full else None
            r["train_vs_frozen"] = r["train_step_s"] / frozen if frozen else None
        if "decode_s" in r and base_dec:
            r["decode_vs_base"] = r["decode_s"] / base_dec
        if "decode_merged_s" in r and base_dec:
            r["decode_merged_vs_base"] = r["decode_merged_s"] / base_dec


def spread(values: List[Optional[float]]) -> dict:
    """Median and [min, max] of the values that exist (None: none do)."""
    v = [x for x in values if x is not None]
    return dict(median=statistics.median(v), range=[min(v), max(v)], n=len(v)) if v else dict(median=None, range=None, n=0)


def summarize(rounds: List[dict], side: str = "results") -> Dict[str, dict]:
    """Per row: the median of each SERIES number over rounds (key as in a worker result) with
    ``<key>_range`` = [min, max]; ``rounds_ok``; ``errors`` if a round failed."""
    out: Dict[str, dict] = {}
    for m in rounds[0][side]:
        per = [rnd[side][m] for rnd in rounds]
        ok = [r for r in per if "error" not in r]
        errors = [f"round {i + 1}: {r['error']}" for i, r in enumerate(per) if "error" in r]
        if not ok:
            out[m] = dict(method=m, error="; ".join(errors), errors=errors, rounds_ok=0)
            continue
        s: dict = {k: ok[0][k] for k in CONSTANT if k in ok[0]}
        for k in SERIES:
            if any(k in r for r in ok):
                sp = spread([r.get(k) for r in ok])
                s[k], s[k + "_range"] = sp["median"], sp["range"]
        s["rounds_ok"] = len(ok)
        if errors:
            s["errors"] = errors
        out[m] = s
    return out


def target_values(results: Dict[str, dict]) -> Dict[str, float]:
    """The target quantities of one round (needs add_ratios first)."""
    vals = dict(mam_train_vs_frozen=results.get("mam", {}).get("train_vs_frozen"),
                mam_decode_vs_base=results.get("mam", {}).get("decode_vs_base"))
    merged = [r["decode_merged_vs_base"] for r in results.values() if r.get("decode_merged_vs_base") is not None]
    vals["lora_merged_decode_vs_base"] = max(merged) if merged else None  # the worst LoRA row of the round
    return {k: v for k, v in vals.items() if v is not None}


def check_targets(rounds: List[dict], judged: bool) -> Dict[str, dict]:
    """Each target: the median of its per-round values, their spread, met on the median (None: not judged)."""
    per_round = [target_values(rnd["results"]) for rnd in rounds]
    out = {}
    for name, limit in TARGETS.items():
        vals = [v.get(name) for v in per_round]
        sp = spread(vals)
        if sp["n"]:
            out[name] = dict(value=sp["median"], range=sp["range"], rounds=vals, target=limit,
                             met=sp["median"] <= limit if judged else None)
    return out


def targets_judged(o) -> bool:
    return not o.tiny and o.rounds >= MIN_ROUNDS_FOR_TARGETS


def compare(rounds: List[dict]) -> Dict[str, dict]:
    """--compare-with: per row and timed quantity, after/before ratio within each round (median and
    spread) and both sides' medians; ``slower`` when the after side's fastest round is slower than
    the before side's slowest (the ranges do not overlap)."""
    out: Dict[str, dict] = {}
    for m in rounds[0]["results"]:
        row = {}
        for k in COMPARED:
            pairs = [(rnd["before"][m].get(k), rnd["results"][m].get(k)) for rnd in rounds]
            pairs = [(b, a) for b, a in pairs if b and a]
            if not pairs:
                continue
            before, after = [b for b, _ in pairs], [a for _, a in pairs]
            ratio = spread([a / b for b, a in pairs])
            row[k] = dict(before=statistics.median(before), after=statistics.median(after),
                          before_range=[min(before), max(before)], after_range=[min(after), max(after)],
                          ratio=ratio["median"], ratio_range=ratio["range"], rounds=len(pairs),
                          slower=min(after) > max(before) if len(pairs) >= MIN_ROUNDS_FOR_TARGETS else None)
        out[m] = row
    return out


def merged_checks(rounds: List[dict]) -> dict:
    """The merged-vs-unmerged LoRA decode check over every round and side; ``ok`` False on any failure.
    A merged decode of this checkout without a check counts as a failure; one of a --compare-with
    checkout without it (older code) is counted as unchecked."""
    out = dict(ok=True, checked=0, unchecked=0, tie_flips=0, max_rescore_diff=None, failures=[])
    for rnd in rounds:
        for side in ("results", "before"):
            for m, r in rnd.get(side, {}).items():
                if "decode_merged_s" not in r:
                    continue
                where = f"round {rnd['round']}{' before' if side == 'before' else ''} {m}"
                c = r.get("merged_check")
                if c is None:
                    if side == "before":
                        out["unchecked"] += 1
                    else:
                        out["failures"].append(f"{where}: merged decode without a check")
                    continue
                out["checked"] += 1
                out["tie_flips"] += c["tie_flips"]
                if c.get("max_rescore_diff") is not None:
                    out["max_rescore_diff"] = max(out["max_rescore_diff"] or 0.0, c["max_rescore_diff"])
                out["failures"] += [f"{where}: {f}" for f in c["failures"]]
    out["ok"] = not out["failures"]
    return out


def _f(x, fmt="{:.3f}") -> str:
    return "–" if x is None else fmt.format(x)


def _mb(x) -> str:
    return "–" if x is None else f"{x / 2 ** 20:,.1f}"


def _med(r: dict, k: str, fmt="{:.3f}") -> str:
    """'median (min–max)' of a summarized number."""
    if r.get(k) is None:
        return "–"
    lo, hi = r.get(k + "_range") or (None, None)
    return _f(r[k], fmt) + ("" if lo is None or lo == hi else f" ({_f(lo, fmt)}–{_f(hi, fmt)})")


def tables(report: dict) -> str:
    results, c = report["results"], report["config"]
    mem = "GPU memory (max allocated)" if c["device"] == "cuda" else "RSS (ru_maxrss)"
    x = "{:.2f}x"
    rounds = f"{c['rounds']} interleaved rounds: median over rounds (min–max)"
    lines = [f"Training step ({c['shape']}, batch {c['batch']} x {c['src_len']} source / {c['tgt_len']} target "
             f"tokens, {c['device']}{' fp16' if c['fp16'] else ''}"
             f"{'' if not c.get('threads') else ', %d thread%s' % (c['threads'], 's' if c['threads'] > 1 else '')}, "
             f"Adam {c.get('optimizer', 'loop')}, "
             f"{'malloc ' + c['malloc'][0] + ', ' if c.get('malloc') else ''}each round's step = median of {c['steps']} "
             f"after {c['warmup']} warm-up; {rounds}; ratios within each round; memory = {mem})", "",
             "| method | trainable | step (s) | vs full | vs frozen floor | train memory (MB) | peak (MB) | "
             "resume ckpt (MB) | inference file (MB) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for m, r in results.items():
        if "error" in r:
            lines.append(f"| {m} | failed: {r['error']} |||||||")
            continue
        lines.append(f"| {m} | {r['trainable']:,} | {_med(r, 'train_step_s')} | {_med(r, 'train_vs_full', x)} | "
                     f"{_med(r, 'train_vs_frozen', x)} | {_mb(r.get('train_mem_bytes'))} | "
                     f"{_mb(r.get('peak_mem_bytes'))} | {_mb(r.get('resume_bytes'))} | {_mb(r.get('inference_bytes'))} |")
    if any("decode_s" in r for r in results.values()):
        lines += ["", f"Decoding (SequenceGenerator, {c['gen_batch']} sentences x {c['src_len']} source tokens, "
                      f"beam {c['beam']}, exactly {c['gen_len']} tokens + </s>, each round's time = median of "
                      f"{c['gen_runs']} after a short warm-up decode; {rounds}; base = the `full` row's plain model)", "",
                  "| method | decode (s) | vs base | LoRA merged (s) | merged vs base |",
                  "|---|---:|---:|---:|---:|"]
        for m, r in results.items():
            if "decode_s" in r:
                lines.append(f"| {m} | {_med(r, 'decode_s')} | {_med(r, 'decode_vs_base', x)} | "
                             f"{_med(r, 'decode_merged_s')} | {_med(r, 'decode_merged_vs_base', x)} |")
    mc = report.get("merged_decode_check")
    if mc and (mc["checked"] or mc["failures"]):
        lines += ["", f"Merged LoRA decode vs unmerged: {'same' if mc['ok'] else 'DIFFERENT'} "
                      f"({mc['checked']} checked, {mc['tie_flips']} tie flips, max |rescored - unmerged| "
                      f"{_f(mc['max_rescore_diff'], '{:.2g}')} nats/token)"]
        lines += [f"- {f}" for f in mc["failures"]]
    if report.get("targets"):
        judged = report.get("targets_judged")
        lines += ["", "| target | median | spread (min–max) | per round | limit | met |",
                  "|---|---:|---:|---:|---:|---|"]
        for k, t in report["targets"].items():
            met = "not judged" if t["met"] is None else ("yes" if t["met"] else "NO")
            lines.append(f"| {k} | {t['value']:.3f}x | {t['range'][0]:.3f}–{t['range'][1]:.3f}x | "
                         f"{' / '.join(_f(v, '{:.3f}') for v in t['rounds'])} | {t['target']:.2f}x | {met} |")
        if not judged:
            lines.append(f"\n(targets are judged on bart shapes with at least {MIN_ROUNDS_FOR_TARGETS} rounds)")
    if report.get("compare"):
        lines += ["", f"Before ({report['compare_with']}) vs after (this checkout): after / before within each "
                      "round, median (min–max); SLOWER = the after side's fastest round is slower than the "
                      "before side's slowest", "",
                  "| method | train before (s) | train after (s) | train after/before | decode before (s) | "
                  "decode after (s) | decode after/before | flag |",
                  "|---|---:|---:|---:|---:|---:|---:|---|"]
        for m, row in report["compare"].items():
            cells = []
            for k in ("train_step_s", "decode_s"):
                q = row.get(k)
                cells += ["–"] * 3 if q is None else [
                    _f(q["before"]), _f(q["after"]),
                    f"{q['ratio']:.3f} ({q['ratio_range'][0]:.3f}–{q['ratio_range'][1]:.3f})"]
            flag = ", ".join(f"SLOWER ({k})" for k, q in row.items() if q["slower"])
            if any(q["slower"] is None for q in row.values()):
                flag = f"(not judged: < {MIN_ROUNDS_FOR_TARGETS} rounds)"
            lines.append(f"| {m} | {' | '.join(cells)} | {flag} |")
    la, lb = report["loadavg_before"], report["loadavg_after"]
    lines += ["", f"load average (1/5/15 min) before {la[0]:.2f}/{la[1]:.2f}/{la[2]:.2f}, "
                  f"after {lb[0]:.2f}/{lb[1]:.2f}/{lb[2]:.2f}; {report['machine']['cpus']} CPUs"]
    return "\n".join(lines)
