"""What a search leaves in OUT: trials.csv (every trial), trials.md (the same as a Markdown table, for
a report), pareto.png (metric against stored parameters, log axis, the front drawn), best.json (the
front and the best trial per budget)."""
from __future__ import annotations

import csv
import json
import os
import re
from typing import Dict, List, Optional

COLUMNS = ["number", "state", "method", "label", "group", "budget", "stored_params", "stored_pct", "metric", "wall_s",
           "flags", "command", "error"]


def rows(trials, metric: str) -> List[dict]:
    out = []
    for t in trials:
        u = t.user_attrs
        value = t.values[0] if t.values else None
        out.append(dict(number=t.number, state=t.state.name, method=u.get("method", ""), label=u.get("label", ""),
                        group=u.get("group", ""), budget=u.get("budget", ""), stored_params=u.get("stored", ""),
                        stored_pct=(round(u["stored_pct"], 4) if "stored_pct" in u else ""),
                        metric="" if value is None else value, wall_s=u.get("wall_s", ""),
                        flags=json.dumps(u.get("flags", {}), sort_keys=True), command=u.get("command", ""),
                        error=u.get("error", "")))
    return out


def design(label: str) -> str:
    """A point's design: its label less its sizes (`adapter.ffn.parallel ffn_bn=4` -> `adapter.ffn.parallel`),
    so that one design at several budgets is one series of the plot."""
    return re.sub(r" (attn|ffn)_bn=\d+", "", label)


def front(rows_: List[dict], maximize: bool) -> List[dict]:
    """The complete trials no other complete trial beats on both the metric and the stored count."""
    done = [r for r in rows_ if r["state"] == "COMPLETE" and r["metric"] != ""]

    def better(a, b):  # a dominates b
        ma, mb = (a["metric"], b["metric"]) if maximize else (-a["metric"], -b["metric"])
        return ma >= mb and a["stored_params"] <= b["stored_params"] and (
            ma > mb or a["stored_params"] < b["stored_params"])

    return sorted((r for r in done if not any(better(o, r) for o in done)), key=lambda r: r["stored_params"])


def best_per_budget(rows_: List[dict], budgets: Dict[str, int], maximize: bool) -> Dict[str, Optional[dict]]:
    done = [r for r in rows_ if r["state"] == "COMPLETE" and r["metric"] != ""]
    out = {}
    for name, n in budgets.items():
        fit = [r for r in done if r["stored_params"] <= n]
        # ties on the metric go to the smaller stored count
        out[name] = max(fit, key=lambda r: (r["metric"] if maximize else -r["metric"], -r["stored_params"])) \
            if fit else None
    return out


def write_csv(path: str, rows_: List[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows_)


def write_best(path: str, rows_: List[dict], budgets: Dict[str, int], cfg: dict) -> dict:
    doc = dict(metric=cfg["metric"], maximize=cfg["maximize"], base_params=cfg["base_params"],
               front=front(rows_, cfg["maximize"]), per_budget=best_per_budget(rows_, budgets, cfg["maximize"]),
               budgets=budgets)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
    return doc


def plot(path: str, rows_: List[dict], cfg: dict, reference: Optional[float] = None) -> None:
    import logging

    # before matplotlib's import, which logs at DEBUG, the level fairseq's import gave the root logger
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows_ if r["state"] == "COMPLETE" and r["metric"] != ""]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    # one series per design (its label starts with the method), so that designs that share a method
    # (sequential and parallel adapters) stay apart; matched budgets put them on one vertical line
    markers = "osD^v<>ph*"
    names = sorted({design(r["label"]) for r in done})
    # designs at one matched budget share a stored count: each is drawn a little aside (at most 10% on the
    # log axis) so that equal metrics do not hide one another
    x = {r["number"]: r["stored_params"] * 10 ** (0.025 * (names.index(design(r["label"])) - (len(names) - 1) / 2))
         for r in done}
    for i, name in enumerate(names):
        pts = [r for r in done if design(r["label"]) == name]
        ax.scatter([x[r["number"]] for r in pts], [r["metric"] for r in pts], label=name, s=34,
                   marker=markers[i % len(markers)], zorder=3)
    fr = front(rows_, cfg["maximize"])
    if fr:
        ax.plot([x[r["number"]] for r in fr], [r["metric"] for r in fr], drawstyle="steps-post", color="black",
                linewidth=1, marker="o", markersize=11, markerfacecolor="none", label="Pareto front")
    if reference is not None:
        ax.axhline(reference, color="grey", linestyle="--", label="full fine-tuning")
    ax.set_xscale("log")
    ax.set_xlabel(f"stored parameters (base: {cfg['base_params']:,})")
    base = cfg["base_params"]
    top = ax.secondary_xaxis("top", functions=(lambda n: 100 * n / base, lambda p: p * base / 100))
    top.set_xlabel("% of the base", fontsize=8)
    ax.set_ylabel(f"valid {cfg['metric']}")
    ax.set_title(f"{cfg['task']}: {len(done)} trials")
    if done:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(rows_: List[dict], cfg: dict) -> str:
    """The trials as a Markdown table, in trial order, the front marked."""
    on_front = {r["number"] for r in front(rows_, cfg["maximize"])}
    lines = [f"| # | design | comparison | budget | stored params | % of base | valid {cfg['metric']} | wall s | state |",
             "|---:|---|---|---|---:|---:|---:|---:|---|"]
    for r in rows_:
        metric = "" if r["metric"] == "" else str(round(float(r["metric"]), 4)) + (" *" if r["number"] in on_front else "")
        stored = f"{r['stored_params']:,}" if r["stored_params"] != "" else ""
        pct = f"{r['stored_pct']:.3f}" if r["stored_pct"] != "" else ""
        wall = f"{float(r['wall_s']):.0f}" if r["wall_s"] != "" else ""
        lines.append(f"| {r['number']} | `{r['label']}` | {r['group']} | {r['budget']} | {stored} | {pct} | {metric} | "
                     f"{wall} | {r['state']} |")
    return "\n".join(lines) + f"\n\n\\* on the Pareto front (valid {cfg['metric']} against stored parameters).\n"


def write_all(out: str, trials, cfg: dict, budgets: Dict[str, int], reference: Optional[float] = None) -> dict:
    rs = rows(trials, cfg["metric"])
    write_csv(os.path.join(out, "trials.csv"), rs)
    with open(os.path.join(out, "trials.md"), "w", encoding="utf-8") as f:
        f.write(markdown(rs, cfg))
    doc = write_best(os.path.join(out, "best.json"), rs, budgets, cfg)
    plot(os.path.join(out, "pareto.png"), rs, cfg, reference)
    return doc


def summary(doc: dict) -> str:
    lines = []
    for name, r in doc["per_budget"].items():
        if r is None:
            lines.append(f"budget {name}: no finished trial fits")
        else:
            lines.append(f"budget {name}: {r['label']} valid {doc['metric']} {r['metric']} with "
                         f"{r['stored_params']:,} stored ({r['stored_pct']}%)\n  {r['command']}")
    return "\n".join(lines)
