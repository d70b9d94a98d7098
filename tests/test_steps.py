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
                          "synthesize.n=3000", "evaluate.steps=120"])
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
    # Each plan row names the function that adds its noise.
    assert "dpsynth.gmm.subspace:" in report
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



def _reweighted_plan(config, train, plan_path, **weights) -> dict:
    """A valid plan file whose noise is split by ``weights`` while its metadata (the
    configuration) is the plan step's: the same releases, another calibration."""
    synth = steps.build_synthesizer(config, train.normalized)
    synth.budget_weights = weights
    data = synth.make_plan(train.dim).to_dict()
    data["metadata"] = json.loads(plan_path.read_text())["metadata"]
    return json.loads(json.dumps(data))


@SEEDED
def test_the_dp_steps_draw_the_noise_the_plan_file_records(digits, tmp_path):
    """The plan file is the source of the noise: its sigmas are drawn as recorded (here a
    budget split that the configuration's default weights would not give), not
    re-calibrated from the configuration."""
    config, _, plan_path, train, _ = digits
    recorded = _reweighted_plan(config, train, plan_path, class_counts=8.0)
    (tmp_path / "plan.json").write_text(json.dumps(recorded))
    default = steps.read_plan(plan_path)
    assert recorded["releases"][1]["sigma"] != default.release("class_counts").sigma
    clusters = steps.dp_cluster(train.path, tmp_path / "plan.json", tmp_path / "clusters")
    mixture = steps.fit_gmm(train.path, clusters, tmp_path / "plan.json", tmp_path / "mixture")
    from_steps = DPSynthesizer.load(mixture)
    assert [(r.name, r.sigma, r.mechanism) for r in from_steps.privacy_plan_.releases] == \
        [(r["name"], r["sigma"], r["mechanism"]) for r in recorded["releases"]]
    # The same noise as the library fit calibrated to that split (seeded draws).
    in_memory = steps.build_synthesizer(config, train.normalized)
    in_memory.budget_weights = {"class_counts": 8.0}
    in_memory.fit(*train.load(), classes=train.classes)
    for name in ("weights", "means", "covariances", "residual_var"):
        np.testing.assert_allclose(getattr(from_steps.mixture_, name),
                                   getattr(in_memory.mixture_, name), rtol=1e-5, atol=1e-7)


def _release(data: dict, name: str) -> dict:
    return next(r for r in data["releases"] if r["name"] == name)


@SEEDED
@pytest.mark.parametrize("edit, match", [
    # The accounting still adds up after each edit (verify_plan_dict passes): only the
    # configuration's specs tell that the plan is not its own.
    (lambda d: _release(d, "class_counts").update(scope="global"),
     "release 'class_counts' has scope 'global' in the plan, but this configuration makes "
     "it with scope 'per_class'"),
    (lambda d: _release(d, "class_sums").update(
        sensitivity=2 * _release(d, "class_sums")["sensitivity"],
        sigma=2 * _release(d, "class_sums")["sigma"]),
     "release 'class_sums' has sensitivity"),
    (lambda d: _release(d, "second_moments").update(name="second_moment"),
     r"release 'second_moments' \(per-component .*\) is not in the plan"),
    (lambda d: d["metadata"].update(subspace_dim=None),
     "release 'subspace_second_moment' is in the plan, but this configuration does not "
     "make it"),
])
def test_a_plan_file_that_is_not_its_configurations_is_refused_naming_the_release(
        digits, tmp_path, edit, match):
    _, _, plan_path, train, _ = digits
    data = json.loads(plan_path.read_text())
    edit(data)
    (tmp_path / "plan.json").write_text(json.dumps(data))
    steps.read_plan(tmp_path / "plan.json")  # a well-formed plan whose accounting holds
    with pytest.raises(steps.StepInputError, match=f"plan.json: {match}"):
        steps.dp_cluster(train.path, tmp_path / "plan.json", tmp_path / "clusters")
    assert not (tmp_path / "clusters").exists()


@SEEDED
def test_fit_gmm_refuses_a_plan_file_other_than_the_clusters_one(digits, tmp_path):
    config, _, plan_path, train, _ = digits
    clusters = steps.dp_cluster(train.path, plan_path, tmp_path / "clusters")
    other = _reweighted_plan(config, train, plan_path, class_counts=8.0)
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(steps.StepInputError,
                       match="other.json: release 'subspace_second_moment' has "
                             "noise_multiplier .* in the plan the clusters were released"):
        steps.fit_gmm(train.path, clusters, tmp_path / "other.json", tmp_path / "mixture")
    assert not (tmp_path / "mixture").exists()
