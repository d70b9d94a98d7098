"""A self-contained HTML report of a run: headline numbers, the classes that got no
synthetic samples and those released but noise-dominated, and why, the privacy plan, the
pictures.

Images are embedded (base64) so that the one file can be opened from MLflow, a Kubeflow
artifact viewer or a mail attachment, and a relative link to each PNG is kept beside it.

The page is the jinja2 template ``templates/report.html.j2`` (package data), autoescaped:
this module only gathers and formats the values.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
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


def noise_dominance_metrics(classes: Sequence[Any], class_names: Sequence[str],
                            provenance: dict[str, Any]) -> dict[str, Any]:
    """The ``metrics.json`` keys of the released classes' noise-to-signal ratios, from the
    synthetic set's provenance (``noise_dominance``, written by the synthesize step with
    :func:`dpsynth.gmm.noise_dominance.assess_model`; public: DP releases and the plan):

    ``noise_to_signal`` (keyed by class label, as a string) and ``noise_to_signal_by_name``
    (by name): rho of each released class, None where no signal is left above the noise;
    ``classes_noise_dominated``: each released class whose synthetic data is mostly noise,
    as ``class``, ``name``, ``noise_to_signal``, ``records_needed`` and ``reason``;
    ``noise_dominated_count``; ``noise_dominance``: the limit, the records a class needs
    not to be noise-dominated, sigma, d and the typical mean norm. For a set without that
    provenance (an older one) the ratios are empty and the count and summary None.
    """
    assessed = provenance.get("noise_dominance")
    if not isinstance(assessed, dict):
        return {"noise_to_signal": {}, "noise_to_signal_by_name": {},
                "classes_noise_dominated": [], "noise_dominated_count": None,
                "noise_dominance": None}
    names = {(c.item() if hasattr(c, "item") else c): str(n)
             for c, n in zip(list(classes), list(class_names), strict=True)}
    entries = [c for c in assessed.get("classes") or [] if isinstance(c, dict)]
    flagged = [{"class": c["class"], "name": names.get(c["class"], str(c["class"])),
                "noise_to_signal": c.get("noise_to_signal"),
                "records_needed": assessed.get("records_needed"),
                "reason": str(c.get("reason", ""))}
               for c in entries if c.get("noise_dominated")]
    return {
        "noise_to_signal": {str(c["class"]): c.get("noise_to_signal") for c in entries},
        "noise_to_signal_by_name": {names.get(c["class"], str(c["class"])):
                                    c.get("noise_to_signal") for c in entries},
        "classes_noise_dominated": flagged,
        "noise_dominated_count": len(flagged),
        "noise_dominance": {k: v for k, v in assessed.items() if k != "classes"},
    }


def _threshold_line(plan: dict[str, Any]) -> str | None:
    """The plan's smallest releasable class and the records a released class needs not
    to be noise-dominated, or None for a plan without count releases."""
    from dpsynth.gmm.noise_dominance import describe_plan
    from dpsynth.privacy.plan import PrivacyPlan, release_threshold

    try:
        made = PrivacyPlan.from_dict(plan)
        return " ".join(line for line in (release_threshold(made).describe(),
                                          describe_plan(made)) if line)
    except (KeyError, ValueError, TypeError):
        return None


def _ratio(x: float | None) -> str:
    """A noise-to-signal ratio as the report shows it (None: no signal left)."""
    return "no signal left" if x is None else f"{x:.2f}"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _fmt(x: Any) -> str:
    """A number as the report shows it (4 significant digits), anything else as text. Not
    escaped: the template escapes every value."""
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


@cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("dpsynth.evaluation", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["fmt"] = _fmt
    return env


def render_html_report(path: Path, metrics: dict[str, Any], plan: dict[str, Any] | None,
                       images: dict[str, Path]) -> str:
    """The page :func:`write_html_report` writes to ``path`` (image links are relative to
    ``path``'s folder). Every value is HTML-escaped by the template."""
    private = metrics.get("private")
    guarantee = (f"({_fmt(metrics.get('epsilon'))}, {_fmt(metrics.get('delta'))})-DP"
                 if private else "NOT private (non-private mode or a fixed noise seed)")
    encoder = _fmt(metrics.get("encoder")) + "".join(
        f", {k}={v}" for k, v in (metrics.get("encoder_options") or {}).items())
    rows = [("Accuracy, MLP trained on DP synthetic data", _pct(metrics.get("accuracy"))),
            ("Accuracy, same MLP trained on real data (non-private ceiling)",
             _pct(metrics.get("nonprivate_accuracy"))),
            ("Privacy guarantee of the synthetic data", guarantee),
            ("Fréchet distance, synthetic vs real test embeddings",
             _fmt(metrics.get("frechet_distance_to_test"))),
            ("Synthetic records / test records",
             f"{metrics.get('n_synthetic')} / {metrics.get('n_test')}"),
            ("Encoder", encoder)]
    pictures = [{"key": key, "title": _TITLES.get(key, key),
                 "href": os.path.relpath(image, Path(path).parent),
                 "base64": base64.b64encode(Path(image).read_bytes()).decode("ascii")}
                for key, image in images.items()]
    plan_view = None
    if plan:
        plan_view = {
            "accountant": str(plan.get("accountant")), "epsilon": plan.get("epsilon"),
            "delta": plan.get("delta"), "epsilon_rdp": plan.get("epsilon_rdp"),
            "releases": [{"name": r["name"], "scope": r["scope"],
                          "sensitivity": r["sensitivity"], "sigma": r["sigma"],
                          "repetitions": r["repetitions"],
                          "description": r.get("description", ""),
                          "mechanism": r.get("mechanism", "")}
                         for r in plan.get("releases", [])]}
    return _environment().get_template("report.html.j2").render(
        rows=rows, note=str(metrics.get("note", "")), private=private,
        missing=[{"name": m.get("name"), "reason": m.get("reason")}
                 for m in metrics.get("classes_without_samples") or []],
        noisy=[{"name": m.get("name"), "ratio": _ratio(m.get("noise_to_signal")),
                "needed": m.get("records_needed"), "reason": m.get("reason")}
               for m in metrics.get("classes_noise_dominated") or []],
        images=pictures, plan=plan_view, threshold=_threshold_line(plan) if plan else None)


def write_html_report(path: Path, metrics: dict[str, Any], plan: dict[str, Any] | None,
                      images: dict[str, Path]) -> Path:
    """Write :func:`render_html_report`'s page to ``path``; returns ``path``."""
    path = Path(path)
    path.write_text(render_html_report(path, metrics, plan, images), encoding="utf-8")
    return path
