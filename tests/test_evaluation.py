"""Utility (MLP, classification report), fidelity (Frechet distance) and baselines."""

from __future__ import annotations

import numpy as np
import pytest

from dpsynth.evaluation import TwoLayerMLP, classification_report, frechet_distance
from dpsynth.evaluation.baselines import (
    dp_class_means,
    dpsgd_noise_multiplier,
    nearest_mean_predict,
)

DELTA = 1e-5


# ------------------------------------------------------------------------------ MLP
def _blobs(n_per_class, seed, dim=10, labels=(2, 5, 9)):
    rng = np.random.default_rng(seed)
    centres = 3.0 * np.eye(dim)[: len(labels)]
    X = np.concatenate([c + rng.normal(size=(n_per_class, dim)) for c in centres])
    y = np.repeat(labels, n_per_class)
    return X.astype(np.float32), y


def test_mlp_learns_an_easy_problem():
    X, y = _blobs(400, seed=0)
    X_test, y_test = _blobs(200, seed=1)
    # Centres 3*sqrt(2) ~ 4.2 apart with unit noise: the Bayes error is ~2%, so a working
    # classifier clears 90% comfortably and a broken one (chance: 33%) does not.
    clf = TwoLayerMLP(hidden=32, epochs=10, lr=1e-2, batch_size=64, random_state=0)
    clf.fit(X, y, classes=np.array([2, 5, 9]))
    assert clf.score(X_test, y_test) > 0.9
    assert set(np.unique(clf.predict(X_test))) <= {2, 5, 9}


def test_mlp_takes_the_same_number_of_steps_whatever_the_number_of_rows():
    # issue 13: a number of epochs is a number of steps that shrinks with n, and small
    # data was underfit; the evaluation MLP takes a fixed number of optimiser steps.
    for n_per_class in (5, 40, 700):
        X, y = _blobs(n_per_class, seed=0)
        clf = TwoLayerMLP(hidden=8, steps=37, batch_size=64).fit(X, y)
        assert clf.steps_taken_ == clf.n_steps(len(X)) == 37
    # epochs (older benchmarks only) still means passes over the data
    X, y = _blobs(100, seed=0)
    assert TwoLayerMLP(hidden=8, epochs=3, batch_size=64).fit(X, y).steps_taken_ == 3 * 5


def test_label_smoothing_makes_the_mlp_less_confident_and_is_validated():
    import torch

    X, y = _blobs(200, seed=0)
    confidence = []
    for smoothing in (0.0, 0.3):
        clf = TwoLayerMLP(hidden=16, steps=300, lr=1e-2, label_smoothing=smoothing).fit(X, y)
        with torch.inference_mode():
            probs = torch.softmax(clf.model_(torch.from_numpy(X)), 1).numpy()
        confidence.append(probs.max(1).mean())
    # smoothing 0.3 over 3 classes targets 0.8 on the true class: well below an
    # unsmoothed model's confidence on separable blobs (> 0.95)
    assert confidence[0] > 0.95 and confidence[1] < 0.9
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="label_smoothing"):
            TwoLayerMLP(steps=1, label_smoothing=bad).fit(X, y)


def test_the_runs_mlp_steps_are_the_documented_constant():
    from dpsynth.config import EvaluateConfig
    from dpsynth.evaluation.mlp import STEPS
    from dpsynth.steps import _mlp_params

    assert EvaluateConfig().steps == TwoLayerMLP().steps == STEPS
    assert _mlp_params(EvaluateConfig())["steps"] == STEPS


def test_evaluate_epochs_is_refused_with_its_replacement_named():
    from dpsynth.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="evaluate.steps"):
        load_config("configs/digits-quick.yaml", ["evaluate.epochs=15"])
    assert load_config("configs/digits-quick.yaml", ["evaluate.steps=7"]).evaluate.steps == 7


def test_the_default_mlp_fits_small_data_that_15_epochs_underfit():
    # 10 Gaussian classes, 40 records each (400 rows): 15 epochs at batch 256 are 30
    # optimiser steps, too few for lr 1e-3; the default fixed number of steps fits them.
    # Centres 6 apart in 20-d with unit noise: the nearest-centre rule scores ~99%.
    rng = np.random.default_rng(0)
    centres = 6.0 / np.sqrt(2) * np.eye(20)[:10]

    def draw(n):
        y = np.repeat(np.arange(10), n)
        return (centres[y] + rng.normal(size=(len(y), 20))).astype(np.float32), y

    X, y = draw(40)
    X_test, y_test = draw(200)
    before = TwoLayerMLP(epochs=15).fit(X, y).score(X_test, y_test)
    now = TwoLayerMLP().fit(X, y).score(X_test, y_test)
    assert now > 0.95
    assert now > before + 0.05  # 15 epochs: 89% (measured)


def test_mlp_rejects_labels_outside_classes():
    X, y = _blobs(20, seed=0)
    with pytest.raises(ValueError, match="not in classes"):
        TwoLayerMLP(epochs=1).fit(X, y, classes=np.array([2, 5]))


def test_classification_report_counts():
    rng = np.random.default_rng(2)
    classes = np.array([0, 3, 4, 8])
    y_true = rng.choice(classes[:3], size=300)  # class 8 never occurs
    y_pred = np.where(rng.random(300) < 0.7, y_true, rng.choice(classes, size=300))
    report = classification_report(y_true, y_pred, classes)
    confusion = np.zeros((4, 4), dtype=np.int64)
    for t, p in zip(np.searchsorted(classes, y_true), np.searchsorted(classes, y_pred),
                    strict=True):
        confusion[t, p] += 1
    np.testing.assert_array_equal(report.confusion, confusion)
    np.testing.assert_array_equal(report.confusion.sum(1),
                                  [(y_true == c).sum() for c in classes])
    for i, c in enumerate(classes[:3]):
        assert report.per_class_accuracy[int(c)] == pytest.approx(
            confusion[i, i] / confusion[i].sum())
    assert report.per_class_accuracy[8] is None  # no test record: nothing to score
    assert report.classes_without_test_records == [8]
    assert report.accuracy == pytest.approx((y_true == y_pred).mean())
    assert report.to_dict()["confusion_matrix"] == confusion.tolist()


# ------------------------------------------------------------------- Frechet distance
def test_frechet_distance_of_a_set_with_itself_is_zero():
    X = np.random.default_rng(3).normal(size=(2000, 6)) @ np.diag([1, 2, 3, 0.5, 1, 1])
    scale = np.trace(np.cov(X, rowvar=False))
    assert frechet_distance(X, X) <= 1e-6 * scale


def test_frechet_distance_grows_with_a_mean_shift():
    X = np.random.default_rng(4).normal(size=(3000, 5))
    direction = np.ones(5) / np.sqrt(5)
    values = [frechet_distance(X, X + s * direction) for s in (0.1, 0.5, 1.0, 2.0)]
    assert values[0] > 0
    assert all(a < b for a, b in zip(values, values[1:], strict=False))
    # Shifting the same sample leaves the covariance unchanged: FD is exactly ||m||^2.
    np.testing.assert_allclose(values, [0.01, 0.25, 1.0, 4.0], rtol=1e-6)


def test_frechet_distance_matches_the_gaussian_closed_form():
    rng = np.random.default_rng(5)
    n, d = 50_000, 4
    var_a, var_b = np.array([1.0, 0.5, 2.0, 1.0]), np.array([1.0, 2.0, 0.5, 0.25])
    shift = np.array([1.0, 0.0, 0.0, 0.0])
    A = rng.normal(size=(n, d)) * np.sqrt(var_a)
    B = shift + rng.normal(size=(n, d)) * np.sqrt(var_b)
    # Diagonal covariances: FD = ||m||^2 + sum (sqrt(a_i) - sqrt(b_i))^2 = 1 + 0.94 = 1.94.
    expected = shift @ shift + ((np.sqrt(var_a) - np.sqrt(var_b)) ** 2).sum()
    # Sampling error: the mean term has std ~ 2 ||m|| sqrt((1 + 1) / n) ~ 0.013, the trace
    # term ~ 0.01; 0.06 is over 3 standard errors of their sum.
    assert frechet_distance(A, B) == pytest.approx(expected, abs=0.06)


@pytest.mark.parametrize("a_shape, b_shape", [((10, 3), (10, 4)), ((10,), (10,)),
                                              ((1, 3), (10, 3))])
def test_frechet_distance_refuses_bad_shapes(a_shape, b_shape):
    with pytest.raises(ValueError):
        frechet_distance(np.zeros(a_shape), np.ones(b_shape))


# ------------------------------------------------------------------------- baselines
def _labelled(seed=6):
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1, 2], [50, 80, 70])
    X = rng.normal(size=(200, 5)) + 3.0 * np.eye(5)[y]
    return X, y


def test_dp_class_means_without_noise_are_the_exact_normalised_means():
    X, y = _labelled()
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    exact = np.stack([Xn[y == c].mean(0) for c in range(3)])
    means = dp_class_means(X, y, np.array([0, 1, 2]), float("inf"), DELTA)
    np.testing.assert_allclose(means, exact, rtol=1e-10, atol=1e-12)
    pred = nearest_mean_predict(means, np.array([0, 1, 2]), X)
    assert (pred == y).mean() > 0.9


def test_dp_class_means_follow_the_given_class_order():
    X, y = _labelled()
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    classes = np.array([1, 0, 2])
    means = dp_class_means(X, y, classes, float("inf"), DELTA)
    np.testing.assert_allclose(means, np.stack([Xn[y == c].mean(0) for c in classes]),
                               atol=1e-12)


def test_dp_class_means_with_finite_epsilon_add_noise():
    X, y = _labelled()
    exact = dp_class_means(X, y, np.array([0, 1, 2]), float("inf"), DELTA)
    seeded = dp_class_means(X, y, np.array([0, 1, 2]), 1.0, DELTA, noise_seed=0)
    again = dp_class_means(X, y, np.array([0, 1, 2]), 1.0, DELTA, noise_seed=0)
    fresh = dp_class_means(X, y, np.array([0, 1, 2]), 1.0, DELTA)
    assert not np.allclose(seeded, exact)
    np.testing.assert_array_equal(seeded, again)
    assert not np.allclose(fresh, seeded)


def test_dpsgd_noise_multiplier_monotone():
    base = dpsgd_noise_multiplier(0.01, 100, 2.0, DELTA)
    tighter = dpsgd_noise_multiplier(0.01, 100, 1.0, DELTA)
    more_runs = dpsgd_noise_multiplier(0.01, 100, 2.0, DELTA, runs=4)
    assert 0 < base < tighter
    assert base < more_runs
    assert dpsgd_noise_multiplier(0.01, 100, float("inf"), DELTA) == 0.0
