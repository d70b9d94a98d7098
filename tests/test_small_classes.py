"""Small classes, stated up front (issue 13, item 3).

At eps = 1 the noise threshold (3 sigma of the count release, about 110 records) drops a
class of fewer records; before, only a ``UserWarning`` said so. Now the plan states the
smallest releasable class before any data is read (``dpsynth plan``, the run's first
lines), and the summary, ``metrics.json`` and the report list every class that got no
samples, and why.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from image_folders import gray_image_folder, image_folder_sets
from typer.testing import CliRunner

from dpsynth import DPSynthesizer
from dpsynth.cli import app
from dpsynth.evaluation.report import classes_without_samples
from dpsynth.gmm.mixture import CLASS_COUNTS, COMPONENT_COUNTS
from dpsynth.privacy.plan import THRESHOLD_RELEASES, release_threshold


def test_the_threshold_releases_are_the_mixture_count_releases():
    assert THRESHOLD_RELEASES == (COMPONENT_COUNTS, CLASS_COUNTS)


@pytest.mark.parametrize("k, release", [(1, CLASS_COUNTS), (3, COMPONENT_COUNTS)])
def test_the_smallest_releasable_class_follows_from_the_plan(k, release):
    plan = DPSynthesizer(1.0, 1e-5, components_per_class=k, subspace_dim=8).make_plan(32)
    limit = release_threshold(plan)
    sigma = plan.release(release).sigma
    assert limit.release == release and limit.sigma == sigma
    assert limit.threshold == pytest.approx(3 * sigma) and limit.threshold > 50  # eps = 1
    assert limit.smallest_class == math.ceil(3 * sigma)
    assert limit.reliable_class == math.ceil(5 * sigma)
    assert str(limit.smallest_class) in limit.describe()
    # No noise: two records make a covariance, and nothing smaller is released.
    free = release_threshold(DPSynthesizer(math.inf, 1e-5, subspace_dim=8).make_plan(32))
    assert (free.threshold, free.smallest_class) == (2.0, 2)


def test_dpsynth_plan_states_the_smallest_releasable_class():
    result = CliRunner().invoke(app, ["plan", "--epsilon", "1", "--dim", "48",
                                      "--subspace-dim", "8"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    sigma = next(r["sigma"] for r in plan["releases"] if r["name"] == CLASS_COUNTS)
    smallest = plan["smallest_releasable_class"]
    assert smallest["release"] == CLASS_COUNTS
    assert smallest["threshold"] == pytest.approx(3 * sigma)
    assert smallest["smallest_class"] == math.ceil(3 * sigma)
    line = f"smallest releasable class: about {smallest['smallest_class']} records"
    assert line in result.stderr and line in smallest["note"]


def _imbalanced(rng: np.random.Generator, sizes: dict[int, int], dim: int = 8):
    X = np.concatenate([rng.normal(c, 0.3, (n, dim)) for c, n in sizes.items()])
    y = np.concatenate([np.full(n, c) for c, n in sizes.items()])
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X, y


def test_a_class_under_the_threshold_is_a_fitted_attribute_with_its_reason(tmp_path):
    X, y = _imbalanced(np.random.default_rng(0), {0: 600, 1: 600, 2: 3})
    synth = DPSynthesizer(1.0, 1e-5, subspace_dim=4, noise_seed=5, random_state=0)
    with pytest.warns(UserWarning, match=r"classes \[2\] have no component"):
        synth.fit(X, y, classes=[0, 1, 2])
    limit = release_threshold(synth.privacy_plan_)
    assert [d["class"] for d in synth.dropped_classes_] == [2]
    dropped = synth.dropped_classes_[0]
    assert dropped["threshold"] == limit.threshold
    assert dropped["noisy_count"] < limit.threshold
    assert "below the noise threshold" in dropped["reason"]
    assert f"{limit.threshold:.1f}" in dropped["reason"]
    _, labels = synth.sample(300)
    assert 2 not in set(labels.tolist())
    # The same after a round trip: it is derived from the releases and the plan.
    assert DPSynthesizer.load(synth.save(tmp_path / "m")).dropped_classes_ == (
        synth.dropped_classes_)
    # Nothing dropped, nothing listed.
    X, y = _imbalanced(np.random.default_rng(1), {0: 600, 1: 600})
    kept = DPSynthesizer(1.0, 1e-5, subspace_dim=4, noise_seed=5).fit(X, y, classes=[0, 1])
    assert kept.dropped_classes_ == []


def test_classes_without_samples_take_the_synthesizers_reason_or_say_none_was_drawn():
    provenance = {"dropped_classes": [{"class": 2, "reason": "below the noise threshold"}]}
    labels = np.array([0, 0, 1])
    assert classes_without_samples([0, 1, 2, 3], ["a", "b", "c", "d"], labels, provenance) == [
        {"class": 2, "name": "c", "reason": "below the noise threshold"},
        {"class": 3, "name": "d",
         "reason": "no synthetic record was drawn for it (its share of the 3 synthetic "
                   "records rounds to 0)"}]
    assert classes_without_samples([0, 1], ["a", "b"], labels, {}) == []


def test_a_run_names_a_class_under_the_threshold_in_summary_metrics_and_report(tmp_path):
    """The done-when test: one class of 2 records among classes of 400 at eps = 1. The
    noise is seeded so the test is deterministic (the class would be released with
    probability about 0.1% with fresh noise)."""
    gray_image_folder(tmp_path / "train", ("big0", "big1", "big2"), per_class=400)
    gray_image_folder(tmp_path / "train", ("tiny",), per_class=2)
    gray_image_folder(tmp_path / "test", ("big0", "big1", "big2", "tiny"), per_class=5)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [
        "run", "--no-progress", "--out", str(out), *image_folder_sets(
            tmp_path, "privacy.epsilon=1", "privacy.noise_seed=7", "synthesize.n=400",
            "evaluate.steps=50", "model.subspace_dim=8", "decode.enabled=false")])
    assert result.exit_code == 0, result.output
    plan = json.loads((out / "privacy_plan.json").read_text())
    sigma = next(r["sigma"] for r in plan["releases"] if r["name"] == CLASS_COUNTS)
    smallest = math.ceil(3 * sigma)
    # Stated up front: the first line, before the budget is charged.
    first = result.stdout.splitlines()[0]
    assert first.startswith(f"smallest releasable class: about {smallest} records"), first
    assert result.stdout.index(first) < result.stdout.index("privacy budget of dataset")

    metrics = json.loads((out / "metrics.json").read_text())
    assert [m["name"] for m in metrics["classes_without_samples"]] == ["tiny"]
    reason = metrics["classes_without_samples"][0]["reason"]
    assert "below the noise threshold" in reason and f"{3 * sigma:.1f}" in reason
    assert f"about {smallest}+ records needed" in reason
    assert "tiny" in metrics["note"]

    tiny = metrics["classes_without_samples"][0]["class"]
    assert f"NO SAMPLES    : class 'tiny' ({tiny}): {reason}" in result.stdout
    assert result.stdout.count("NO SAMPLES") == 1

    report = (out / "evaluation" / "report.html").read_text()
    assert "Classes without synthetic samples" in report
    assert "<td>tiny</td>" in report and "below the noise threshold" in report
    assert f"smallest releasable class: about {smallest} records" in report
