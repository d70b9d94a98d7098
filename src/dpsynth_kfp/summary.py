"""The evaluate task's Markdown summary for the Kubeflow UI, from ``metrics.json``'s keys:
what a person reads first, in class names (no samples, released but noise-dominated)."""

from __future__ import annotations

from typing import Any


def summary_markdown(m: dict[str, Any]) -> str:
    """The summary of the evaluate step's metrics ``m`` (:func:`dpsynth.steps.evaluate_run`)."""
    lines = [f"- **accuracy (synthetic-trained MLP)**: {100 * m['accuracy']:.1f}%",
             f"- **guarantee**: (eps={m['epsilon']}, delta={m['delta']})"
             + ("" if m["private"] else " NOT PRIVATE")]
    if m.get("nonprivate_accuracy") is not None:
        lines.append(f"- **non-private ceiling**: {100 * m['nonprivate_accuracy']:.1f}% "
                     "(not covered by the guarantee)")
    for c in m.get("classes_noise_dominated") or []:
        ratio = c.get("noise_to_signal")
        lines.append(f"- **released but noise-dominated**: class '{c['name']}' ("
                     + ("no signal above the noise" if ratio is None else
                        f"noise-to-signal {ratio:.2f}")
                     + f"; about {c['records_needed']}+ records needed at this eps)")
    for c in m.get("classes_without_samples") or []:
        lines.append(f"- **no samples**: class '{c['name']}'")
    return "# dpsynth\n\n" + "\n".join(lines) + "\n"
