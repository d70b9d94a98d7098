"""The pipeline steps: files in, files out, and equal to the in-memory fit."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dpsynth import DPSynthesizer, steps
from dpsynth.config import load_config
from dpsynth.data.store import EmbeddingSet, write_embedding_set

SEEDED = pytest.mark.filterwarnings("ignore:noise_seed is set:UserWarning")


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("digits")
    config = load_config("configs/digits-quick.yaml",
                         [f"encoder.cache_dir={tmp / 'cache'}", "privacy.noise_seed=5",
                          "synthesize.n=3000", "evaluate.epochs=10"])
    plan_path = tmp / "privacy_plan.json"
    steps.plan(config, plan_path)
    return config, tmp, plan_path, steps.encode(config, "train", progress=False), \
        steps.encode(config, "test", progress=False)


@SEEDED
def test_steps_equal_the_in_memory_fit(digits, tmp_path):
    config, _, plan_path, train, _ = digits
    clusters = steps.dp_cluster(train.path, plan_path, tmp_path / "clusters")
    mixture = steps.fit_gmm(train.path, clusters, plan_path, tmp_path / "mixture")
    from_steps = DPSynthesizer.load(mixture)
    X, y = train.load()
    in_memory = steps.build_synthesizer(config, train.normalized).fit(
        X, y, classes=train.classes)
    for name in ("weights", "means", "covariances", "residual_var"):
        np.testing.assert_allclose(getattr(from_steps.mixture_, name),
                                   getattr(in_memory.mixture_, name), rtol=1e-5, atol=1e-7)
    assert from_steps.privacy_plan_ == in_memory.privacy_plan_


@SEEDED
def test_full_chain_writes_the_documented_outputs(digits, tmp_path):
    config, _, plan_path, train, test = digits
    clusters = steps.dp_cluster(train.path, plan_path, tmp_path / "clusters")
    mixture = steps.fit_gmm(train.path, clusters, plan_path, tmp_path / "mixture")
    synthetic = steps.synthesize(mixture, tmp_path / "synthetic", n=3000)
    assert synthetic.count == 3000 and synthetic.manifest["synthetic"]
    assert synthetic.manifest["provenance"]["private"] is False  # noise was seeded
    decoded = steps.decode(synthetic.path, tmp_path / "decoded", per_class=4)
    images = np.load(decoded / "images.npy")
    assert images.shape[1:] == (8, 8) and images.dtype == np.uint8
    assert (decoded / "grid.png").stat().st_size > 1000
    import csv

    from PIL import Image

    with open(decoded / "index.csv") as f:
        index = list(csv.DictReader(f))
    assert len(index) == len(images) == 40
    first = index[0]
    assert np.array_equal(np.asarray(Image.open(decoded / first["file"])), images[0])
    assert {r["class"] for r in index} == {str(i) for i in range(10)}
    image_level = steps.evaluate_images(synthetic.path, test.path, config, progress=False)
    # pixels: decode then re-encode is the identity up to 8-bit rounding, so the image-level
    # classifier learns the digits like the embedding-level one.
    assert image_level["image_level_accuracy"] > 0.5
    assert 0 < image_level["image_level_n"] <= 3000
    metrics = steps.evaluate(synthetic.path, test.path, tmp_path / "eval",
                             settings=config.evaluate, train_dir=train.path,
                             plan_path=plan_path, decoded_dir=decoded, progress=False)
    on_disk = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert on_disk == metrics
    assert {"accuracy", "nonprivate_accuracy", "epsilon", "delta"} <= metrics.keys()
    # Chance is 10%: the synthetic-trained MLP must have learnt the digits.
    assert metrics["accuracy"] > 0.5
    assert np.asarray(metrics["confusion_matrix"]).sum() == test.count
    for name in ("projection", "per_class_accuracy", "confusion_matrix"):
        assert (tmp_path / "eval" / "plots" / f"{name}.png").stat().st_size > 5000
    report = (tmp_path / "eval" / "report.html").read_text()
    assert "data:image/png;base64" in report and "subspace_second_moment" in report
    assert "NOT covered" in metrics["note"]


@SEEDED
def test_steps_check_their_inputs(digits, tmp_path):
    _, _, plan_path, train, test = digits
    with pytest.raises(steps.StepInputError, match="does not exist"):
        steps.dp_cluster(train.path, tmp_path / "missing.json", tmp_path / "c")
    meta = dict(encoder="pixels", normalized=False, classes=[0], class_names=["x"],
                dataset_id="x", key={})
    bad_dim = write_embedding_set(tmp_path / "bad", np.ones((20, 5), np.float32),
                                  np.zeros(20, int), **meta)
    with pytest.raises(steps.StepInputError, match="dimension 64"):
        steps.dp_cluster(bad_dim.path, plan_path, tmp_path / "c")
    fake = write_embedding_set(tmp_path / "syn", np.ones((20, 64), np.float32),
                               np.zeros(20, int), synthetic=True, **meta)
    with pytest.raises(steps.StepInputError, match="synthetic"):
        steps.dp_cluster(fake.path, plan_path, tmp_path / "c")
    with pytest.raises(steps.StepInputError, match="real test embeddings"):
        steps.evaluate(fake.path, fake.path, tmp_path / "e", progress=False)
    with pytest.raises(FileNotFoundError, match="not a saved DPSynthesizer"):
        steps.fit_gmm(train.path, tmp_path / "nothing", plan_path, tmp_path / "m")
    # A plan file edited after dp_cluster: its recorded noise no longer adds up.
    clusters = steps.dp_cluster(train.path, plan_path, tmp_path / "c")
    tampered = json.loads(plan_path.read_text())
    tampered["releases"][0]["noise_multiplier"] *= 0.5
    (tmp_path / "tampered.json").write_text(json.dumps(tampered))
    with pytest.raises(steps.StepInputError, match="tampered.json: release "):
        steps.fit_gmm(train.path, clusters, tmp_path / "tampered.json", tmp_path / "m")
    assert not (tmp_path / "m").exists()
    assert EmbeddingSet.open(test.path).count == 360

