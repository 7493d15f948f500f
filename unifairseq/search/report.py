"""What a search leaves in OUT: trials.csv (every trial), pareto.png (metric against stored
parameters, log axis, the front drawn), best.json (the front and the best trial per budget)."""
from __future__ import annotations

import csv
import json
import os
from typing import Dict, List, Optional

COLUMNS = ["number", "state", "method", "label", "group", "stored_params", "stored_pct", "metric", "wall_s",
           "flags", "command", "error"]


def rows(trials, metric: str) -> List[dict]:
    out = []
    for t in trials:
        u = t.user_attrs
        value = t.values[0] if t.values else None
        out.append(dict(number=t.number, state=t.state.name, method=u.get("method", ""), label=u.get("label", ""),
                        group=u.get("group", ""), stored_params=u.get("stored", ""),
                        stored_pct=(round(u["stored_pct"], 4) if "stored_pct" in u else ""),
                        metric="" if value is None else value, wall_s=u.get("wall_s", ""),
                        flags=json.dumps(u.get("flags", {}), sort_keys=True), command=u.get("command", ""),
                        error=u.get("error", "")))
    return out


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

    import matplotlib

    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # fairseq's import set the root logger to DEBUG
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows_ if r["state"] == "COMPLETE" and r["metric"] != ""]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in sorted({r["method"] for r in done}):
        pts = [r for r in done if r["method"] == method]
        ax.scatter([r["stored_params"] for r in pts], [r["metric"] for r in pts], label=method, s=30)
    fr = front(rows_, cfg["maximize"])
    if fr:
        ax.plot([r["stored_params"] for r in fr], [r["metric"] for r in fr], drawstyle="steps-post", color="black",
                linewidth=1, marker="o", markersize=11, markerfacecolor="none", label="Pareto front")
    if reference is not None:
        ax.axhline(reference, color="grey", linestyle="--", label="full fine-tuning")
    ax.set_xscale("log")
    ax.set_xlabel(f"stored parameters (base: {cfg['base_params']:,})")
    ax.set_ylabel(f"valid {cfg['metric']}")
    ax.set_title(f"{cfg['task']}: {len(done)} trials")
    if done:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_all(out: str, trials, cfg: dict, budgets: Dict[str, int], reference: Optional[float] = None) -> dict:
    rs = rows(trials, cfg["metric"])
    write_csv(os.path.join(out, "trials.csv"), rs)
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
