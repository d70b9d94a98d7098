"""A self-contained HTML report of a run: headline numbers, the classes that got no
synthetic samples and why, the privacy plan, the pictures.

Images are embedded (base64) so that the one file can be opened from MLflow, a Kubeflow
artifact viewer or a mail attachment, and a relative link to each PNG is kept beside it.
"""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

_TITLES = {
    "projection": "Synthetic vs real test embeddings (2-D projection)",
    "per_class_accuracy": "Per-class test accuracy: synthetic-trained vs real-trained MLP",
    "confusion_matrix": "Confusion matrix (MLP trained on synthetic, real test set)",
    "decoded_samples": "Decoded synthetic samples, one row per class",
}


def classes_without_samples(classes: Sequence[Any], class_names: Sequence[str],
                            labels: np.ndarray, provenance: dict[str, Any]
                            ) -> list[dict[str, Any]]:
    """Every class with no synthetic record, and why: ``{"class", "name", "reason"}``.

    The reason is the synthesizer's (``dropped_classes`` of the synthetic set's provenance,
    written by the synthesize step from ``DPSynthesizer.dropped_classes_``: no component
    above the noise threshold), else that no record was drawn for it (its share of ``n``
    rounds to 0). Everything here is public: labels of synthetic records, DP releases.
    """
    counts = {c: int(k) for c, k in zip(*np.unique(np.asarray(labels), return_counts=True),
                                         strict=True)}
    dropped = {d.get("class"): d for d in provenance.get("dropped_classes") or []
               if isinstance(d, dict)}
    out = []
    for label, name in zip(list(classes), list(class_names), strict=True):
        label = label.item() if hasattr(label, "item") else label
        if counts.get(label, 0):
            continue
        reason = (dropped[label].get("reason") if label in dropped else
                  f"no synthetic record was drawn for it (its share of the "
                  f"{int(np.asarray(labels).size)} synthetic records rounds to 0)")
        out.append({"class": label, "name": str(name), "reason": str(reason)})
    return out


def _threshold_line(plan: dict[str, Any]) -> str | None:
    """The plan's smallest releasable class, or None for a plan without count releases."""
    from dpsynth.privacy.plan import PrivacyPlan, release_threshold

    try:
        return release_threshold(PrivacyPlan.from_dict(plan)).describe()
    except (KeyError, ValueError, TypeError):
        return None


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.4g}"
    return html.escape(str(x))


def write_html_report(path: Path, metrics: dict[str, Any], plan: dict[str, Any] | None,
                      images: dict[str, Path]) -> Path:
    path = Path(path)
    private = metrics.get("private")
    guarantee = (f"({_fmt(metrics.get('epsilon'))}, {_fmt(metrics.get('delta'))})-DP"
                 if private else "NOT private (non-private mode or a fixed noise seed)")
    rows = [("Accuracy, MLP trained on DP synthetic data", _pct(metrics.get("accuracy"))),
            ("Accuracy, same MLP trained on real data (non-private ceiling)",
             _pct(metrics.get("nonprivate_accuracy"))),
            ("Privacy guarantee of the synthetic data", guarantee),
            ("Fréchet distance, synthetic vs real test embeddings",
             _fmt(metrics.get("frechet_distance_to_test"))),
            ("Synthetic records / test records",
             f"{metrics.get('n_synthetic')} / {metrics.get('n_test')}"),
            ("Encoder", _fmt(metrics.get("encoder")) + "".join(
                f", {html.escape(str(k))}={html.escape(str(v))}"
                for k, v in (metrics.get("encoder_options") or {}).items()))]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>dpsynth report</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;"
        "text-align:left}img{max-width:100%}.warn{color:#a00}</style></head><body>",
        "<h1>dpsynth run report</h1>",
        "<table>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{v}</td></tr>"
                            for k, v in rows) + "</table>",
        f"<p><small>{html.escape(str(metrics.get('note', '')))}</small></p>",
    ]
    if not private:
        parts.append("<p class='warn'><b>This run is not private.</b> Do not share its "
                     "outputs as DP data.</p>")
    missing = metrics.get("classes_without_samples") or []
    if missing:
        parts.append("<h2 class='warn'>Classes without synthetic samples</h2><p>These "
                     "classes are in the class list but got no synthetic record, so a model "
                     "trained on the synthetic data cannot predict them.</p><table><tr>"
                     "<th>class</th><th>why</th></tr>"
                     + "".join(f"<tr><td>{_fmt(m.get('name'))}</td>"
                               f"<td>{_fmt(m.get('reason'))}</td></tr>" for m in missing)
                     + "</table>")
    for key, image in images.items():
        data = base64.b64encode(Path(image).read_bytes()).decode()
        rel = os.path.relpath(image, path.parent)
        parts.append(f"<h2>{html.escape(_TITLES.get(key, key))}</h2>"
                     f"<p><a href='{html.escape(rel)}'>{html.escape(rel)}</a></p>"
                     f"<img alt='{html.escape(key)}' src='data:image/png;base64,{data}'>")
    if plan:
        parts.append("<h2>Privacy plan</h2><p>Every noisy release, its L2 sensitivity and "
                     f"Gaussian noise; composed with {html.escape(str(plan.get('accountant')))}"
                     f": epsilon = {_fmt(plan.get('epsilon'))} at delta = "
                     f"{_fmt(plan.get('delta'))} (RDP bound {_fmt(plan.get('epsilon_rdp'))})."
                     "</p><table><tr><th>release</th><th>scope</th><th>sensitivity</th>"
                     "<th>sigma</th><th>repetitions</th><th>what</th>"
                     "<th>noise added by</th></tr>")
        for r in plan.get("releases", []):
            parts.append(f"<tr><td>{_fmt(r['name'])}</td><td>{_fmt(r['scope'])}</td>"
                         f"<td>{_fmt(r['sensitivity'])}</td><td>{_fmt(r['sigma'])}</td>"
                         f"<td>{_fmt(r['repetitions'])}</td>"
                         f"<td>{_fmt(r.get('description', ''))}</td>"
                         f"<td><code>{_fmt(r.get('mechanism', ''))}</code></td></tr>")
        parts.append("</table>")
        threshold = _threshold_line(plan)
        if threshold:
            parts.append(f"<p>{html.escape(threshold)}</p>")
    parts.append("</body></html>")
    path.write_text("\n".join(parts))
    return path
