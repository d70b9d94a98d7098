"""Released classes that are only noise (issue 25, item 1).

At eps = 4 with d = 1280, a class of 60 records clears the count's noise threshold and is
released, yet the noise on its class sum outweighs its records: its synthetic mean points
elsewhere and a classifier trained on the synthetic data scores it near 0%. The run now
says so, from the DP releases and the plan alone (:mod:`dpsynth.gmm.noise_dominance`):
``MOSTLY NOISE`` in the summary, ``classes_noise_dominated`` and ``noise_to_signal`` in
``metrics.json``, a section of the report, and per-class MLflow metrics.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from image_folders import gray_image_folder, image_folder_sets
from typer.testing import CliRunner

from dpsynth import DPSynthesizer
from dpsynth.cli import app
from dpsynth.data.datasets import FASHION_MNIST_DIR
from dpsynth.evaluation.report import noise_dominance_metrics
from dpsynth.gmm.mixture import CLASS_SUMS
from dpsynth.gmm.noise_dominance import (
    NOISE_TO_SIGNAL_LIMIT,
    assess_classes,
    assess_model,
    describe_plan,
    fewest_records_needed,
    noise_to_signal,
    records_needed,
    typical_mean_norm,
)
from dpsynth.ledger_charge import numeric_metrics
from dpsynth.privacy.plan import release_threshold

D = 1280  # EfficientNet-Lite0's dimension: the issue's setting


def _plan(eps: float, dim: int = D):
    return DPSynthesizer(eps, 1e-5).make_plan(dim)


def _released_sums(rng, sizes, sigma, mean_norm=0.8, dim=D):
    """Noisy class sums of classes of ``sizes`` records with means of norm ``mean_norm``
    (random directions), as ``class_sums`` releases them."""
    means = rng.normal(size=(len(sizes), dim))
    means *= mean_norm / np.linalg.norm(means, axis=1, keepdims=True)
    n = np.asarray(sizes, float)
    return n[:, None] * means + rng.normal(0.0, sigma, (len(sizes), dim))


# ------------------------------------------------------------------------- estimator
def test_the_ratio_estimates_the_noise_on_the_mean_against_its_signal():
    """rho_hat = sigma sqrt(d) / sqrt(||s||^2 - sigma^2 d) estimates rho = sigma sqrt(d) /
    (n |m|) from the release alone: over 100 releases, its median within 3% of rho and its
    spread the one the module's docstring derives (about 10% of rho at 60 records,
    eps = 4; 0.1% at 4000), to within 25%."""
    sigma = _plan(4.0).release(CLASS_SUMS).sigma
    n = np.array([60.0, 100.0, 400.0, 4000.0])
    signal = (n * 0.8) ** 2
    truth = sigma * math.sqrt(D) / (n * 0.8)
    spread = 0.5 * np.sqrt(4 * sigma**2 * signal + 2 * sigma**4 * D) / signal
    rng = np.random.default_rng(0)
    rho = np.array([noise_to_signal((_released_sums(rng, n, sigma) ** 2).sum(1), sigma, D)
                    for _ in range(100)])
    np.testing.assert_allclose(np.median(rho, axis=0), truth, rtol=0.03)
    np.testing.assert_allclose((rho / truth - 1).std(axis=0), spread, rtol=0.25)
    assert spread[0] == pytest.approx(0.1, abs=0.01) and spread[-1] < 0.001


def test_a_huge_class_is_not_flagged_a_class_near_the_count_threshold_is():
    plan = _plan(4.0)
    sigma = plan.release(CLASS_SUMS).sigma
    smallest = release_threshold(plan).smallest_class  # about 33 records at eps = 4
    sizes = [100_000, 400, smallest, release_threshold(plan).reliable_class]
    rng = np.random.default_rng(1)
    sums = _released_sums(rng, sizes, sigma)
    counts = np.asarray(sizes, float) + rng.normal(0, 10.0, len(sizes))
    result = assess_classes([10, 11, 12, 13], counts, sums, [0, 1, 2, 3], plan, radius=1.0)
    flags = {c["class"]: c["noise_dominated"] for c in result.classes}
    assert flags == {10: False, 11: False, 12: True, 13: True}
    assert result.classes[0]["noise_to_signal"] < 0.01
    # What it needs: records_needed at the estimated typical mean norm (0.8 here).
    assert result.mean_norm == pytest.approx(0.8, rel=0.05)
    assert result.records_needed == records_needed(sigma, D, result.mean_norm)
    assert result.records_needed > release_threshold(plan).reliable_class
    reason = result.classes[2]["reason"]
    assert reason.startswith("released but noise-dominated") and "kept" not in reason
    assert f"About {result.records_needed}+ records needed at eps = 4" in reason
    # Strict JSON (no infinity), and the summary of the limit.
    assert json.loads(json.dumps(result.to_dict(), allow_nan=False))["limit"] == (
        NOISE_TO_SIGNAL_LIMIT)


def test_a_class_of_the_records_needed_sits_at_the_limit():
    sigma, mean_norm = 2.5, 0.7
    n = records_needed(sigma, D, mean_norm)
    exact = sigma * math.sqrt(D) / (n * mean_norm)
    assert exact <= NOISE_TO_SIGNAL_LIMIT < sigma * math.sqrt(D) / ((n - 1) * mean_norm)
    # From the plan alone, at the largest mean norm R: a lower bound for any class.
    plan = _plan(4.0)
    fewest = fewest_records_needed(plan, D, radius=1.0)
    assert fewest == records_needed(plan.release(CLASS_SUMS).sigma, D, 1.0)
    assert fewest <= records_needed(plan.release(CLASS_SUMS).sigma, D, 0.8)
    assert f"about {fewest} records" in describe_plan(plan)


def test_no_signal_left_is_an_infinite_ratio_and_no_typical_norm():
    sigma = 3.0
    rng = np.random.default_rng(2)
    noise_only = rng.normal(0, sigma, (3, D))
    energy = (noise_only**2).sum(1)
    energy[0] = 0.5 * sigma**2 * D  # well under the noise's energy
    rho = noise_to_signal(energy, sigma, D)
    assert rho[0] == math.inf and (rho[1:] > 3).all()  # noise only: far over the limit
    assert typical_mean_norm(energy[:1], np.array([50.0]), sigma, D, 1.0) is None
    # Capped at the radius: a mean's norm is at most R.
    assert typical_mean_norm(np.array([1e9]), np.array([10.0]), sigma, D, 1.0) == 1.0


def test_eps_inf_flags_nothing():
    plan = _plan(math.inf)
    rng = np.random.default_rng(3)
    sizes = [2, 3, 400]
    sums = _released_sums(rng, sizes, 0.0)
    result = assess_classes([0, 1, 2], np.asarray(sizes, float), sums, [0, 1, 2], plan, 1.0)
    assert [c["noise_dominated"] for c in result.classes] == [False] * 3
    assert [c["noise_to_signal"] for c in result.classes] == [0.0] * 3
    assert result.records_needed == 0 and describe_plan(plan) is None


def test_any_mixture_is_assessed_and_one_without_its_class_release_is_not():
    """More than one component per class: the class release is there all the same (the
    class's ratio is a lower bound on its components'). A mixture file written without
    the cluster arrays has no class sums: nothing is assessed, and the metrics say so
    with empty ratios and no count (not 0)."""
    rng = np.random.default_rng(4)
    X = np.concatenate([rng.normal(c, 0.3, (n, 8)) for c, n in ((0, 500), (1, 500), (2, 60))])
    y = np.repeat([0, 1, 2], [500, 500, 60])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # seeded noise
        synth = DPSynthesizer(4.0, 1e-5, components_per_class=2, subspace_dim=4,
                              noise_seed=1, random_state=0).fit(X, y, classes=[0, 1, 2])
    assessed = assess_model(synth, {0: "a", 1: "b", 2: "c"})
    released = sorted(set(synth.component_class_.tolist()))
    assert [c["class"] for c in assessed["classes"]] == released
    assert {c["name"] for c in assessed["classes"]} <= {"a", "b", "c"}
    del synth.clusters_
    assert assess_model(synth) is None
    metrics = noise_dominance_metrics([0, 1, 2], ["a", "b", "c"], {"noise_dominance": None})
    assert metrics["noise_to_signal"] == {} and metrics["classes_noise_dominated"] == []
    assert metrics["noise_dominated_count"] is None and metrics["noise_dominance"] is None


# ------------------------------------------------------------------------- the run
def test_a_run_names_a_noise_dominated_class_in_summary_metrics_report_and_mlflow(tmp_path):
    """Three classes of 300 records and one of 45 at eps = 4, 32 x 32 pixels (d = 1024):
    the small class clears the count threshold and is released, but the class-sum noise
    over 1024 coordinates is several times its signal. Seeded noise: deterministic."""
    gray_image_folder(tmp_path / "train", ("big0", "big1", "big2"), per_class=300, size=32)
    gray_image_folder(tmp_path / "train", ("faint",), per_class=45, size=32)
    gray_image_folder(tmp_path / "test", ("big0", "big1", "big2", "faint"), per_class=5,
                      size=32)
    out = tmp_path / "out"
    sets = [s.replace("[8, 8]", "[32, 32]").replace("image_size=8", "image_size=32")
            for s in image_folder_sets(
                tmp_path, "privacy.epsilon=4", "privacy.noise_seed=3", "synthesize.n=400",
                "evaluate.steps=20", "evaluate.nonprivate_baseline=false",
                "model.subspace_dim=8", "decode.enabled=false")]
    result = CliRunner().invoke(app, ["run", "--no-progress", "--out", str(out), *sets])
    assert result.exit_code == 0, result.output
    plan = DPSynthesizer.load(out / "mixture").privacy_plan_
    # Stated up front, from the plan alone, right after the smallest releasable class.
    lines = result.stdout.splitlines()
    assert lines[1] == describe_plan(plan) and "noise-dominated below about" in lines[1]

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["classes_without_samples"] == []
    [faint] = metrics["classes_noise_dominated"]
    assert faint["name"] == "faint" and faint["noise_to_signal"] > NOISE_TO_SIGNAL_LIMIT
    assert faint["reason"].startswith("released but noise-dominated")
    assert faint["records_needed"] == metrics["noise_dominance"]["records_needed"] > 45
    assert set(metrics["noise_to_signal_by_name"]) == {"big0", "big1", "big2", "faint"}
    assert all(metrics["noise_to_signal_by_name"][f"big{i}"] < NOISE_TO_SIGNAL_LIMIT / 2
               for i in range(3))
    assert metrics["noise_dominated_count"] == 1 and "faint" in metrics["note"]
    # The same as the library says of the saved model (public releases only).
    assessed = assess_model(DPSynthesizer.load(out / "mixture"))
    assert [c["noise_dominated"] for c in assessed["classes"]] == [False, False, False, True]

    label = faint["class"]
    assert f"MOSTLY NOISE  : class 'faint' ({label}): released but noise-dominated" in (
        result.stdout)
    assert result.stdout.count("MOSTLY NOISE  :") == 1 and "NO SAMPLES" not in result.stdout

    report = (out / "evaluation" / "report.html").read_text()
    assert "Classes released but noise-dominated" in report
    assert "<td>faint</td>" in report and "noise-dominated below about" in report

    logged = numeric_metrics(metrics)  # what the run logs to MLflow
    assert logged["noise_dominated_count"] == 1
    assert logged[f"noise_dominated.{label}"] == 1.0
    assert logged[f"noise_to_signal.{label}"] == pytest.approx(faint["noise_to_signal"])
    assert sum(v for k, v in logged.items() if k.startswith("noise_dominated.")) == 1


# -------------------------------------------------------------- Fashion-MNIST check
HAS_FASHION = any((FASHION_MNIST_DIR / f"train-images-idx3-ubyte{ext}").exists()
                  for ext in ("", ".gz"))
#: The issue's shape: five classes of 400 records, five of 60. The small ones are the five
#: upper-body garments, each with look-alikes among the others, as the issue's were.
LARGE = (1, 5, 7, 8, 9)  # Trouser, Sandal, Sneaker, Bag, Ankle boot
SMALL = (0, 2, 3, 4, 6)  # T-shirt/top, Pullover, Dress, Coat, Shirt
CHANCE = 0.1


def fashion_subset(per_test_class: int = 60):
    """EfficientNet-Lite0 (64 px) embeddings of the subset: (X, y) train, (Xt, yt) test."""
    from dpsynth.data import load_fashion_mnist
    from dpsynth.encoders import get_encoder

    rng = np.random.default_rng(0)
    train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    idx = np.concatenate([rng.choice(np.flatnonzero(train.labels == c),
                                     60 if c in SMALL else 400, replace=False)
                          for c in range(10)])
    tidx = np.concatenate([rng.choice(np.flatnonzero(test.labels == c), per_test_class,
                                      replace=False) for c in range(10)])
    encoder = get_encoder("efficientnet-lite0", image_size=64, device="cpu")
    X = encoder.encode(train.images[idx], batch_size=256).astype(np.float64)
    Xt = encoder.encode(test.images[tidx], batch_size=256)
    return (X, train.labels[idx]), (Xt, test.labels[tidx])


def per_class_accuracy(X, y, Xt, yt, steps: int = 500) -> np.ndarray:
    """The evaluation MLP (fewer steps than a run's default) trained on (X, y), per class
    on the real test set."""
    from dpsynth.evaluation.mlp import TwoLayerMLP

    pred = TwoLayerMLP(steps=steps, random_state=0).fit(X, y, classes=np.arange(10)).predict(Xt)
    return np.array([(pred[yt == c] == c).mean() for c in range(10)])


def fashion_check(data, eps: float, noise_seed: int) -> dict[str, np.ndarray]:
    """Fit at ``eps``, sample 500 records per released class, and score: the per-class
    accuracy, the ratio and flag of each class (NaN / False where dropped)."""
    (X, y), (Xt, yt) = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # seeded noise; dropped classes
        synth = DPSynthesizer(eps, 1e-5, noise_seed=noise_seed, random_state=0).fit(
            X, y, classes=np.arange(10))
    released = set(synth.component_class_.tolist())
    Xs, ys = synth.sample(500 * len(released), class_balance="balanced", random_state=0)
    assessed = assess_model(synth)
    rho, flagged = np.full(10, np.nan), np.zeros(10, bool)
    for c in assessed["classes"]:
        ratio = c["noise_to_signal"]
        rho[c["class"]] = math.inf if ratio is None else ratio
        flagged[c["class"]] = c["noise_dominated"]
    return {"accuracy": per_class_accuracy(Xs, ys, Xt, yt), "rho": rho, "flagged": flagged,
            "released": np.isin(np.arange(10), sorted(released))}


@pytest.mark.slow  # real data and pretrained weights: about 40 s on one core
@pytest.mark.skipif(not HAS_FASHION, reason=f"Fashion-MNIST is not installed in "
                                            f"{FASHION_MNIST_DIR} (dataset-fashion-mnist)")
def test_fashion_mnist_every_useless_class_is_flagged_and_no_useful_one():
    """Every released class scoring under twice chance (20%) is flagged, and no class
    scoring over 80% of its non-private accuracy is. At eps = 1 the small classes are
    mostly dropped (NO SAMPLES) and the large ones, at noise-to-signal 0.95-1.3, not
    flagged; at eps = 4 all ten are released and exactly the five small ones, at 1.6-2.8,
    are.
    Seeded noise; the same held for noise seeds 1-6 (the ranges above are over 10)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a shared machine, spinning threads cost far more
    try:
        data = fashion_subset()
        (X, y), (Xt, yt) = data
        ceiling = per_class_accuracy(X, y, Xt, yt)
        checks = {eps: fashion_check(data, eps, noise_seed=1) for eps in (1.0, 4.0)}
    finally:
        torch.set_num_threads(threads)
    small = np.isin(np.arange(10), SMALL)
    for eps, got in checks.items():
        acc, flagged, released = got["accuracy"], got["flagged"], got["released"]
        useless = released & (acc < 2 * CHANCE)
        useful = released & (acc > 0.8 * ceiling)
        detail = f"eps={eps}: accuracy {acc.round(2)}, ceiling {ceiling.round(2)}, " \
                 f"rho {got['rho'].round(2)}"
        assert flagged[useless].all(), detail
        assert not flagged[useful].any(), detail
        # What is flagged is what is small: a small class released at eps = 1 (one time
        # in twelve) is far over the limit (rho over 4).
        assert (flagged[released] == small[released]).all(), detail
        if eps == 4.0:
            assert released.all(), detail
