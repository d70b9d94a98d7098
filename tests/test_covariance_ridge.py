"""The covariance ridge (issue 15): post-processing of released values at the noise's scale.

``noise_ridge`` is 2 sigma sqrt(r) / n_c, the spectral norm of the noise on a released
covariance (Wigner's semicircle edge); its calibration is checked statistically against
the noise ``NoiseSource.symmetric_gaussian`` really adds. A fit with the ridge makes the
same releases with the same noise as one without it, and differs from it by exactly the
ridge on each covariance's diagonal.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from dpsynth import DPSynthesizer
from dpsynth.gmm.mixture import SECOND_MOMENTS, noise_ridge
from dpsynth.privacy import NoiseSource
from dpsynth.privacy.plan import Release


def _data(n: int = 3000, d: int = 20, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    X = rng.normal(size=(n, d)) + 2.0 * np.eye(3, d)[y]
    return X, y


def _fit(eps: float, **kw) -> DPSynthesizer:
    X, y = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # seeded noise: NOT private, test only
        return DPSynthesizer(eps, 1e-5, subspace_dim=6, noise_seed=7, random_state=0,
                             **kw).fit(X, y, classes=range(3))


@pytest.mark.parametrize("dim", [64, 256])  # 64: the default subspace_dim
def test_ridge_is_the_spectral_edge_of_the_added_noise(dim):
    # The largest eigenvalue of the symmetric noise the release adds (sigma per entry)
    # sits at the edge 2 sigma sqrt(dim) up to Tracy-Widom fluctuations: its mean is
    # sigma (2 sqrt(dim) + E[TW1] dim^(-1/6)), E[TW1] = -1.2065. Over 200 draws the mean
    # top eigenvalue, and minus the bottom one, are within 3% of that; and the ridge (the
    # edge) is above both means, i.e. it covers the noise's typical extreme.
    sigma, count = 3.0, 50.0
    release = Release(SECOND_MOMENTS, 1.0, sigma)
    noise = NoiseSource(11)
    spectra = np.array([np.linalg.eigvalsh(noise.symmetric_gaussian(release, dim))
                        for _ in range(200)])
    edge = noise_ridge(sigma, dim, np.array([count]))[0] * count
    expected = sigma * (2 * math.sqrt(dim) - 1.2065 * dim ** (-1 / 6))
    for extreme in (spectra[:, -1].mean(), -spectra[:, 0].mean()):
        assert extreme == pytest.approx(expected, rel=0.03)
        assert extreme < edge
    # and the formula: divided by the count, floored at one record, 0 without noise
    np.testing.assert_allclose(noise_ridge(sigma, dim, [50.0, 0.2]),
                               [2 * sigma * math.sqrt(dim) / 50, 2 * sigma * math.sqrt(dim)])
    assert not noise_ridge(0.0, dim, [10.0]).any()


def test_a_ridge_fit_makes_the_same_releases_and_adds_the_ridge_only():
    plain, ridged = _fit(1.0), _fit(1.0, covariance_ridge=1.0)
    a, b = plain.mixture_, ridged.mixture_
    plan_a, plan_b = plain.privacy_plan_.to_dict(), ridged.privacy_plan_.to_dict()
    assert plan_a["releases"] == plan_b["releases"]  # no release added, the same noise
    assert plan_a["noise_scale"] == plan_b["noise_scale"]
    for field in ("weights", "means", "residual_var", "component_class"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    sigma = plain.privacy_plan_.release(SECOND_MOMENTS).sigma
    r = a.covariances.shape[-1]
    lam = noise_ridge(sigma, r, a.weights)
    assert (lam > 0).all()
    np.testing.assert_allclose(b.covariances - a.covariances,
                               lam[:, None, None] * np.eye(r), atol=1e-12)
    half = _fit(1.0, covariance_ridge=0.5).mixture_
    np.testing.assert_allclose(half.covariances - a.covariances,
                               0.5 * lam[:, None, None] * np.eye(r), atol=1e-12)


def test_no_ridge_without_noise_or_outside_lowrank():
    exact = [_fit(math.inf, covariance_ridge=r).mixture_.covariances for r in (0.0, 1.0)]
    np.testing.assert_array_equal(*exact)
    diagonal = [_fit(1.0, covariance="diagonal", covariance_ridge=r).mixture_.covariances
                for r in (0.0, 1.0)]
    np.testing.assert_array_equal(*diagonal)


@pytest.mark.parametrize("bad", [-0.1, math.inf, math.nan, True, "1"])
def test_invalid_ridge_is_refused(bad):
    with pytest.raises((ValueError, TypeError), match="covariance_ridge"):
        _fit(1.0, covariance_ridge=bad)


def test_a_model_file_written_before_the_ridge_existed_still_loads(tmp_path):
    """Model files of format 1 saved before ``covariance_ridge`` was added lack the key;
    they load as ridge 0, which is what their fit did, and sample the same records."""
    import json

    model = _fit(1.0)
    model.save(tmp_path)
    meta = json.loads((tmp_path / "params.json").read_text())
    del meta["params"]["covariance_ridge"]
    (tmp_path / "params.json").write_text(json.dumps(meta))
    old = DPSynthesizer.load(tmp_path)
    assert old.covariance_ridge == 0.0
    np.testing.assert_array_equal(old.sample(500, random_state=3)[0],
                                  model.sample(500, random_state=3)[0])
    del meta["params"]["subspace_dim"]  # a key that was always written is still required
    (tmp_path / "params.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"lacks \['subspace_dim'\]"):
        DPSynthesizer.load(tmp_path)
