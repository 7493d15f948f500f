"""The demo's report: the markdown table, results.md and the accuracy-vs-parameters plot."""
from __future__ import annotations

import os
from typing import List, Optional

from .common import quiet_logging
from .methods import BATCH


def human_bytes(n: Optional[int]) -> str:
    if n is None:
        return "–"
    for unit, k in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= k:
            return f"{n / k:.1f} {unit}"
    return f"{n} B"


def markdown_table(rows: List[dict], n_dev: int) -> str:
    lines = [f"| method | trained params (% of base) | paper formula count (%) | dev acc (all {n_dev}) | "
             "train wall time | checkpoint written | inference file |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        formula = f"{r['formula']:,} ({100 * r['formula'] / r['base']:.2f}%)" if r.get("formula") is not None else "–"
        cpu = f", CPU {r['train_cpu_s']:.0f} s" if r.get("train_cpu_s") is not None else ""
        inf = (f"{human_bytes(r['inference_bytes'])} ({r['inference_bytes']:,} B)"
               if r.get("inference_bytes") is not None else "–")
        lines.append(
            f"| {r['label']} | {r['trainable']:,} ({r['trainable_pct']:.2f}%) | {formula} | "
            f"{100 * r['dev_accuracy']:.2f}% ({r['dev_correct']}/{r['dev_total']}) | "
            f"{r['train_wall_s']:.0f} s{cpu} ({r.get('updates', '?')} updates) | "
            f"{human_bytes(r['checkpoint_bytes'])} ({r['checkpoint_bytes']:,} B) | {inf} |")
    return "\n".join(lines)


def stored_pct(r: dict) -> Optional[float]:
    """The parameters of the exported inference file, % of the frozen base (None when not exported)."""
    if not r.get("inference_params") or not r.get("base"):
        return None
    return 100.0 * r["inference_params"] / r["base"]


def plot(rows: List[dict], path: str, title: str, n_dev: int, majority: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    quiet_logging()
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    xs = []
    for r in rows:
        x, y = r["trainable_pct"], 100 * r["dev_accuracy"]
        points = ax.scatter([x], [y], s=70 if r["name"] == "mam" else 40, zorder=3,
                            marker="*" if r["name"] == "mam" else ("s" if r["name"] == "full" else "o"))
        ax.annotate(f"{r['label']}\n{y:.1f}%", (x, y), textcoords="offset points", xytext=(6, 3), fontsize=8)
        xs.append(x)
        stored = stored_pct(r)
        if stored is not None and abs(stored - x) > 1e-9:
            # the paper's story is the stored delta (the exported inference file: prefix MLP folded away),
            # which for MAM and prefix is a tenth of what trains
            color = points.get_facecolor()[0]
            ax.scatter([stored], [y], s=40, zorder=3, facecolors="none", edgecolors=[color])
            ax.plot([stored, x], [y, y], color=color, lw=0.8, ls=":", zorder=2)
            xs.append(stored)
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter

    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}%"))
    ax.set_xlabel("parameters, % of the frozen base (log scale): filled = trained, hollow = stored "
                  "(the inference file)", fontsize=8)
    ax.set_ylabel(f"SST-2 dev accuracy, % (all {n_dev})")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.axhline(100 * majority, color="grey", lw=0.8, ls="--")
    ax.annotate(f"majority class {100 * majority:.1f}%", (0.01, 100 * majority), xycoords=("axes fraction", "data"),
                textcoords="offset points", xytext=(0, 3), fontsize=7, color="grey")
    ys = [100 * r["dev_accuracy"] for r in rows]
    ax.set_ylim(min(min(ys), 100 * majority) - 2, max(ys) + 3)
    ax.set_xlim(min(xs) / 2, max(xs) * 4)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def report_markdown(rows: List[dict], data: dict, total: float, jobs: int, threads: int,
                    cpu_total: Optional[float] = None, load0=None, load1=None) -> str:
    cpu = f", {cpu_total / 60:.1f} min of CPU time" if cpu_total is not None else ""
    load = (f" (1-minute load average {load0[0]:.1f} at the start, {load1[0]:.1f} at the end)"
            if load0 and load1 else "")
    head = (f"SST-2 (GLUE) dev accuracy of all-MiniLM-L6-v2 (6 layers, d=384) imported into fairseq, fine-tuned on "
            f"{data['n_train']:,} sampled training examples (batch {BATCH}) on a CPU ({os.cpu_count()} cores, "
            f"{jobs} run(s) at a time, {threads} thread(s) each). Whole demo: {total / 60:.1f} min wall clock{cpu}"
            f"{load}.")
    notes = [
        "trained params = what receives gradients, including the 2-class classification head (dense 384x384 + "
        "output, 148,226 parameters) that every method trains; % of the frozen base (MiniLM as fairseq "
        "RoBERTa, with fairseq's unused LM head).",
        "paper formula count = the paper's count of the delta alone (prefix: the 2·l·d vectors per layer, "
        "without the reparametrization MLP; no head).",
        f"dev acc = the final checkpoint (nothing selected on dev) on all {data['n_dev']} dev sentences, counted "
        f"with fairseq's sentence_prediction criterion; the dev majority class is {100 * data['dev_majority']:.1f}%.",
        "every run trains exactly its configured updates, however busy the machine (the time budget only warns): "
        "the same seed and update counts give the same accuracies; only the times vary.",
        "train wall time = the whole fairseq-train process (start-up, loading MiniLM, training, saving), "
        "while the other run of its pair shares the machine; CPU = that process's user + system time.",
        "checkpoint written = checkpoint_last.pt as fairseq-train wrote it (delta methods: the trained tensors, "
        "their Adam state and the base fingerprint; full FT: the whole model and its Adam state); inference "
        "file = `unifairseq-export inference` (delta methods: prefix MLP folded into vectors, no optimizer "
        "state) or the checkpoint without optimizer state (full FT).",
    ]
    choices = [f"- {r['label']} (`--arch {r['arch']}{' ' + ' '.join(r['flags']) if r['flags'] else ''}`): "
               f"{r['note']}; Adam lr {r['lr']:g}, {r['planned_updates']} updates, 6% warmup then linear decay"
               for r in rows]
    return "\n".join([head, "", markdown_table(rows, data["n_dev"]), "", *("- " + n for n in notes), "",
                      "Settings:", *choices, ""])
