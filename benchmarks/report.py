"""Render docs/results.md tables from benchmarks/results/*.json.

    .venv/bin/python benchmarks/report.py

Prints the markdown tables; docs/results.md embeds them with the prose around them.
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def utility_table(name: str = "utility") -> str:
    """The table of a utility.py results file: utility.json (64 px) or another --out."""
    data = json.loads((RESULTS / f"{name}.json").read_text())
    rows = data["rows"]
    finite = sorted({float(r["epsilon"]) for r in rows if r["epsilon"] != "inf"})
    eps = [str(e) for e in finite] + (["inf"] if any(r["epsilon"] == "inf" for r in rows
                                                     if r["method"] != "nonprivate-mlp") else [])
    # dpsynth first, then the rows in the order the file first has them.
    methods = sorted(dict.fromkeys(r["method"] for r in rows), key=lambda m: m != "dpsynth")
    cell = {(r["method"], str(r["epsilon"])): r for r in rows}
    lines = ["| method | " + " | ".join(f"eps={e}" for e in eps) + " |",
             "|---|" + "---|" * len(eps)]

    def fmt(r: dict) -> str:
        # Rows measured over several noise draws (issue 26) show the spread.
        if r.get("n_draws", 1) > 1:
            return f"{100 * r['accuracy']:.1f} ± {100 * r['std']:.1f}"
        return f"{100 * r['accuracy']:.1f}"

    for m in methods:
        if m == "nonprivate-mlp":
            continue
        cells = [fmt(cell[(m, e)]) if (m, e) in cell else "-" for e in eps]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    nonpriv = [r for r in rows if r["method"] == "nonprivate-mlp"]
    if nonpriv:
        lines.append(f"\nNon-private MLP on real embeddings: {100 * nonpriv[0]['accuracy']:.1f}%.")
    return "\n".join(lines)


def scale_table() -> str:
    data = json.loads((RESULTS / "scale.json").read_text())
    lines = ["| method | n | seconds | heap peak (MB) | RSS peak (MB) |", "|---|---|---|---|---|"]
    for r in data["rows"]:
        if "skipped" in r:
            lines.append(f"| {r['method']} | {r['n']:,} | skipped: {r['skipped']} | | |")
        else:
            lines.append(f"| {r['method']} | {r['n']:,} | {r['seconds']} | "
                         f"{r['heap_peak_mb']} | {r['rss_peak_mb']} |")
    return "\n".join(lines)


def run_time_table() -> str:
    data = json.loads((RESULTS / "run_time.json").read_text())
    lines = ["| embedding cache | seconds | target | accuracy | non-private accuracy |",
             "|---|---|---|---|---|"]
    for key, label in (("cold_cache", "empty (encodes 70k images)"), ("warm_cache", "warm")):
        r = data[key]
        lines.append(f"| {label} | {r['seconds']} | {data['targets_seconds'][key]} | "
                     f"{100 * r['accuracy']:.1f}% | {100 * r['nonprivate_accuracy']:.1f}% |")
    return "\n".join(lines)


def oracle_bound_table() -> str:
    data = json.loads((RESULTS / "oracle_bound.json").read_text())
    summary = data["summary"]
    eps = list(dict.fromkeys(str(r["epsilon"]) for r in summary))
    cell = {(r["method"], str(r["epsilon"])): r for r in summary}
    lines = ["| method | " + " | ".join(f"eps={e}" for e in eps) + " |",
             "|---|" + "---|" * len(eps)]
    for m in dict.fromkeys(r["method"] for r in summary):
        cells = []
        for e in eps:
            r = cell[(m, e)]
            spread = f" ({100 * r['min']:.1f}-{100 * r['max']:.1f})" if r["min"] != r["max"] else ""
            cells.append(f"{100 * r['accuracy']:.1f}{spread}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    dpsgd = [f"{100 * cell[(summary[0]['method'], e)]['dp_sgd']:.1f}"
             if cell[(summary[0]["method"], e)]["dp_sgd"] is not None else "-" for e in eps]
    lines.append("| dp-sgd (utility.json) | " + " | ".join(dpsgd) + " |")
    return "\n".join(lines)


def covariance_variants_table() -> str:
    data = json.loads((RESULTS / "covariance_variants.json").read_text())
    rows = data["rows"]
    eps = list(dict.fromkeys(str(r["epsilon"]) for r in rows))
    lines = ["| method | " + " | ".join(f"eps={e}" for e in eps) + " |",
             "|---|" + "---|" * len(eps)]
    for m in dict.fromkeys(r["method"] for r in rows):
        cells = []
        for e in eps:
            accs = [r["val_accuracy"] for r in rows
                    if r["method"] == m and str(r["epsilon"]) == e]
            cells.append(" / ".join(f"{100 * a:.1f}" for a in accs) if accs else "-")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    for name, fn in (("utility", utility_table),
                     ("utility-160px", lambda: utility_table("utility-160px")),
                     ("utility-baselines-64px", lambda: utility_table("utility-baselines-64px")),
                     ("scale", scale_table),
                     ("run_time", run_time_table), ("oracle_bound", oracle_bound_table),
                     ("covariance_variants", covariance_variants_table)):
        if (RESULTS / f"{name}.json").exists():
            print(f"## {name}\n\n{fn()}\n")
