"""A self-contained HTML report of a run: headline numbers, the privacy plan, the pictures.

Images are embedded (base64) so that the one file can be opened from MLflow, a Kubeflow
artifact viewer or a mail attachment, and a relative link to each PNG is kept beside it.
"""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from typing import Any

_TITLES = {
    "projection": "Synthetic vs real test embeddings (2-D projection)",
    "per_class_accuracy": "Per-class test accuracy: synthetic-trained vs real-trained MLP",
    "confusion_matrix": "Confusion matrix (MLP trained on synthetic, real test set)",
    "decoded_samples": "Decoded synthetic samples, one row per class",
}


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
            ("Encoder", _fmt(metrics.get("encoder")))]
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
    parts.append("</body></html>")
    path.write_text("\n".join(parts))
    return path
