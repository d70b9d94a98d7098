"""Render docs/results.md tables from benchmarks/results/*.json.

    .venv/bin/python benchmarks/report.py

Prints the markdown tables; docs/results.md embeds them with the prose around them.
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def utility_table() -> str:
    data = json.loads((RESULTS / "utility.json").read_text())
    rows = data["rows"]
    eps = list(dict.fromkeys(str(r["epsilon"]) for r in rows if r["method"] != "nonprivate-mlp"))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    acc = {(r["method"], str(r["epsilon"])): r["accuracy"] for r in rows}
    lines = ["| method | " + " | ".join(f"eps={e}" for e in eps) + " |",
             "|---|" + "---|" * len(eps)]
    for m in methods:
        if m == "nonprivate-mlp":
            continue
        cells = [f"{100 * acc[(m, e)]:.1f}" if (m, e) in acc else "-" for e in eps]
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


if __name__ == "__main__":
    for name, fn in (("utility", utility_table), ("scale", scale_table),
                     ("run_time", run_time_table)):
        if (RESULTS / f"{name}.json").exists():
            print(f"## {name}\n\n{fn()}\n")
