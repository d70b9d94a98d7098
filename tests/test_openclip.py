"""open_clip encoder: tiny random-weight models built in code, every way to load weights."""

from __future__ import annotations

import time

import numpy as np
import pytest
from tiny_openclip import save_tiny

from dpsynth import steps
from dpsynth.config import load_config
from dpsynth.encoders import EncoderLoadError, get_encoder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Registers the model config 'dpsynth-tiny' and saves random weights three ways."""
    return save_tiny(tmp_path_factory.mktemp("openclip"), "dpsynth-tiny")


def _images(n=5, seed=0, shape=(20, 20, 3)):
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def test_checkpoint_and_local_dir_give_the_same_embeddings(tiny):
    by_file = get_encoder(f"open_clip:dpsynth-tiny:{tiny / 'tiny.pt'}", device="cpu")
    by_dir = get_encoder(f"open_clip:ignored:local-dir:{tiny / 'folder'}", device="cpu")
    random = get_encoder("open_clip:dpsynth-tiny", device="cpu")
    X = _images()
    a, b = by_file.encode(X), by_dir.encode(X)
    assert a.shape == (5, 16) and a.dtype == np.float32 and by_file.dim == 16
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(a, random.encode(X), atol=1e-3)  # weights were really loaded
    assert by_file.name.startswith("open_clip:dpsynth-tiny:") and by_file.normalized


def test_grayscale_and_any_size_are_accepted(tiny):
    enc = get_encoder(f"open_clip:dpsynth-tiny:{tiny / 'tiny.pt'}", device="cpu")
    gray = _images(shape=(28, 28))
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    np.testing.assert_allclose(enc.encode(gray), enc.encode(rgb), atol=1e-6)


@pytest.mark.parametrize("spec, message", [
    ("open_clip:no-such-model:x.pt", "does not exist"),
    ("open_clip:no-such-model", "unknown open_clip model"),
    ("open_clip:ViT-B-32:no-such-tag", "no pretrained tag 'no-such-tag'"),
    ("open_clip:x:local-dir:/nonexistent", "not an open_clip model folder"),
])
def test_bad_specs_are_clear_errors(spec, message):
    with pytest.raises(EncoderLoadError, match=message):
        get_encoder(spec, device="cpu")


def test_offline_missing_hub_weights_fail_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    with pytest.raises(EncoderLoadError, match="offline"):
        get_encoder("open_clip:ViT-B-32:laion2b_s34b_b79k", cache_dir=str(tmp_path),
                    device="cpu")
    assert time.monotonic() - started < 30  # no minute of retries


def test_tiny_open_clip_runs_through_the_steps(tiny, tmp_path):
    config = load_config("configs/digits-quick.yaml", [
        f"encoder.name=open_clip:dpsynth-tiny:{tiny / 'tiny.pt'}", "encoder.options={}",
        f"encoder.cache_dir={tmp_path / 'cache'}", "model.normalize=null",
        "model.subspace_dim=8", "synthesize.n=1000", "evaluate.steps=12",
        "evaluate.nonprivate_baseline=false"])
    plan = steps.plan(config, tmp_path / "plan.json")
    assert plan.metadata["embedding_dim"] == 16 and plan.metadata["normalize"] is True
    train = steps.encode(config, "train", progress=False)
    test = steps.encode(config, "test", progress=False)
    assert train.encoder == config.encoder.name and train.normalized
    clusters = steps.dp_cluster(train.path, tmp_path / "plan.json", tmp_path / "c")
    mixture = steps.fit_gmm(train.path, clusters, tmp_path / "plan.json", tmp_path / "m")
    synthetic = steps.synthesize(mixture, tmp_path / "s", n=1000)
    X, _ = synthetic.load()
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-4)
    assert steps.decode(synthetic.path, tmp_path / "d") is None  # no decoder registered
    metrics = steps.evaluate(synthetic.path, test.path, tmp_path / "e", progress=False,
                             settings=config.evaluate)
    assert metrics["encoder"] == config.encoder.name
    # Random weights make a poor classifier, but the synthetic distribution must still sit
    # near the real one: far closer than random unit vectors do.
    from dpsynth.evaluation.fidelity import frechet_distance

    Xt, _ = test.load()
    noise = np.random.default_rng(0).normal(size=X.shape)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    assert metrics["frechet_distance_to_test"] < 0.5 * frechet_distance(Xt, noise)
