"""The saved mixture is fit_gmm's contract with synthesize (dpsynth.gmm.mixture_file).

A replacement fit_gmm writes the files with the module alone, from the plan step's
privacy_plan.json and its own arrays; DPSynthesizer.load and the synthesize step read them.
The format version is written, checked, and a file without it is version 1.
"""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from dpsynth import DPSynthesizer, steps
from dpsynth.gmm import mixture_file
from dpsynth.gmm.mixture import MixtureParams
from dpsynth.gmm.mixture_file import (
    FORMAT_VERSION,
    ModelFileError,
    SavedMixture,
    read_mixture,
    write_mixture,
)
from dpsynth.privacy.plan import verify_plan_dict
from dpsynth.synthesizer import ModelFileError as ReExported

D, R = 8, 2
CLASSES = [3, 7]
DOCS = Path(__file__).resolve().parents[1] / "docs" / "formats.md"


@pytest.fixture(scope="module")
def plan_file(tmp_path_factory) -> Path:
    """What the plan step writes for a lowrank model with two components per class."""
    plan = DPSynthesizer(1.0, 1e-5, components_per_class=2, subspace_dim=R, normalize=False,
                         clip_norm=100.0, random_state=0).make_plan(D)
    path = tmp_path_factory.mktemp("plan") / "privacy_plan.json"
    path.write_text(json.dumps(plan.to_dict()))
    return path


def _replacement_fit_gmm(plan_path: Path, out: Path) -> dict[str, np.ndarray]:
    """A fit_gmm that is not DPSynthesizer: it reads the plan file and writes a mixture
    (here fixed arrays: two components per class in a 2-d subspace of the 8-d space)."""
    plan = verify_plan_dict(json.loads(plan_path.read_text()))
    V = np.linalg.qr(np.random.default_rng(0).normal(size=(D, R)))[0]  # orthonormal (D, R)
    means = np.zeros((4, D))
    means[[0, 1, 2, 3], [0, 1, 4, 5]] = [4.0, -4.0, 6.0, 8.0]
    mixture = MixtureParams(
        component_class=np.array([0, 0, 1, 1]),
        weights=np.array([300.0, 100.0, 200.0, 200.0]),
        means=means,
        covariances=np.array([np.diag([1.0, 0.5]), [[1.0, 0.3], [0.3, 1.0]],
                              np.eye(R) * 0.2, np.eye(R) * 2.0]),
        residual_var=np.array([0.1, 0.1, 0.05, 0.2]),
        class_totals=np.array([400.0, 400.0]))
    saved = SavedMixture.from_plan(
        plan, classes=np.array(CLASSES), class_totals=mixture.class_totals, subspace=V,
        mixture=mixture,
        embedding_info={"encoder": "pixels", "encoder_options": {}, "dim": D,
                        "normalized": False, "classes": CLASSES, "class_names": ["a", "b"],
                        "dataset_id": "toy"})
    write_mixture(out, saved)
    return {"means": means, "weights": mixture.weights, "subspace": V}


@pytest.fixture(scope="module")
def written(plan_file, tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    out = tmp_path_factory.mktemp("mixture")
    return out, _replacement_fit_gmm(plan_file, out)


def test_a_mixture_written_without_dpsynthesizer_loads_and_samples(written):
    path, truth = written
    assert sorted(p.name for p in path.iterdir()) == ["arrays.npz", "embedding_info.json",
                                                      "params.json"]
    assert json.loads((path / "params.json").read_text())["format_version"] == FORMAT_VERSION
    model = DPSynthesizer.load(path)
    assert model.covariance == "lowrank" and model.n_features_in_ == D
    np.testing.assert_array_equal(model.classes_, CLASSES)
    X, y = model.sample(20_000, random_state=1)
    assert X.shape == (20_000, D) and X.dtype == np.float32
    assert set(np.unique(y)) == set(CLASSES)
    assert abs(np.mean(y == 3) - 0.5) < 0.02  # class_totals 400 / 400
    for c, label in enumerate(CLASSES):
        w = truth["weights"][2 * c: 2 * c + 2]
        mean = (w / w.sum()) @ truth["means"][2 * c: 2 * c + 2]
        np.testing.assert_allclose(X[y == label].mean(axis=0), mean, atol=0.1)


def test_the_synthesize_step_reads_a_replacement_fit_gmm_s_files(written, tmp_path):
    path, _ = written
    synthetic = steps.synthesize(path, tmp_path / "synthetic", n=500, random_state=2)
    assert synthetic.count == 500 and synthetic.manifest["class_names"] == ["a", "b"]
    X, y = synthetic.load()
    Xs, ys = DPSynthesizer.load(path).sample(500, random_state=2)
    np.testing.assert_array_equal(X, Xs)
    np.testing.assert_array_equal(y, ys)


def test_read_mixture_gives_back_what_was_written(written):
    path, truth = written
    saved = read_mixture(path)
    assert saved.stage == "mixture" and saved.format_version == FORMAT_VERSION
    assert saved.clusters is None and saved.embedding_info["dataset_id"] == "toy"
    np.testing.assert_array_equal(saved.mixture.means, truth["means"])
    np.testing.assert_array_equal(saved.subspace, truth["subspace"])
    assert saved.params == mixture_file.params_from_plan(saved.privacy_plan)


def test_a_saved_synthesizer_round_trips_through_the_module(tmp_path):
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 200)
    X = rng.normal(size=(400, 6)) + 2 * np.eye(6)[y]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the seeded-noise warning
        synth = DPSynthesizer(2.0, 1e-5, subspace_dim=3, components_per_class=2,
                              noise_seed=1, random_state=0).fit(X, y, classes=[0, 1])
    first = synth.save(tmp_path / "a")
    again = write_mixture(tmp_path / "b", read_mixture(first))
    assert (again / "params.json").read_bytes() == (first / "params.json").read_bytes()
    with np.load(first / "arrays.npz") as a, np.load(again / "arrays.npz") as b:
        assert a.files == b.files
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key])


# ------------------------------------------------------------------- format version
def _edit(path: Path, edit) -> None:
    meta = json.loads((path / "params.json").read_text())
    edit(meta)
    (path / "params.json").write_text(json.dumps(meta))


def test_a_file_of_an_unknown_future_version_is_refused(written, tmp_path):
    path = shutil.copytree(written[0], tmp_path / "m")
    _edit(path, lambda m: m.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(ModelFileError, match=re.escape(
            f"{path / 'params.json'}: unsupported format_version {FORMAT_VERSION + 1} (this "
            f"version of dpsynth reads format_version {FORMAT_VERSION}")) as info:
        DPSynthesizer.load(path)
    assert "newer dpsynth" in str(info.value)


@pytest.mark.parametrize("version", [0, "1", True, None, 1.5])
def test_a_format_version_that_is_not_a_known_integer_is_refused(written, tmp_path, version):
    path = shutil.copytree(written[0], tmp_path / "m")
    _edit(path, lambda m: m.update(format_version=version))
    with pytest.raises(ModelFileError, match="unsupported format_version"):
        read_mixture(path)


def test_a_file_without_a_format_version_loads_as_version_1(written, tmp_path):
    path = shutil.copytree(written[0], tmp_path / "m")
    _edit(path, lambda m: m.pop("format_version"))
    assert read_mixture(path).format_version == 1
    old = DPSynthesizer.load(path)
    np.testing.assert_array_equal(old.sample(300, random_state=4)[0],
                                  DPSynthesizer.load(written[0]).sample(300, random_state=4)[0])


def test_a_file_without_a_later_format_1_parameter_loads(written, tmp_path):
    path = shutil.copytree(written[0], tmp_path / "m")
    _edit(path, lambda m: (m.pop("format_version"), m["params"].pop("covariance_ridge")))
    assert DPSynthesizer.load(path).covariance_ridge == 0.0


# -------------------------------------------------------------------- write checks
def test_write_refuses_a_mixture_that_would_not_load_and_writes_nothing(written, tmp_path):
    saved = read_mixture(written[0])
    saved.mixture.means = saved.mixture.means[:, :-1]
    with pytest.raises(ModelFileError, match=r"'means' has shape \(4, 7\), expected \(4, 8\)"):
        write_mixture(tmp_path / "bad", saved)
    assert not (tmp_path / "bad").exists()


def test_write_refuses_params_that_are_not_the_plan_s(written, tmp_path):
    saved = read_mixture(written[0])
    saved.params = {**saved.params, "delta": 1e-6}
    with pytest.raises(ModelFileError, match="but the privacy plan's target is"):
        write_mixture(tmp_path / "bad", saved)


@pytest.mark.parametrize("edit, match", [
    (lambda info: info.pop("dataset_id"), r"lacks \['dataset_id'\]"),
    (lambda info: info.update(dim=9), "dim is 9, but the model's n_features_in is 8"),
    (lambda info: info.update(classes=[3, 8]), "are not the model's classes"),
    (lambda info: info.update(class_names=["a"]), "are not the model's classes"),
])
def test_embedding_info_must_describe_the_model(written, tmp_path, edit, match):
    path = shutil.copytree(written[0], tmp_path / "m")
    info = json.loads((path / "embedding_info.json").read_text())
    edit(info)
    (path / "embedding_info.json").write_text(json.dumps(info))
    with pytest.raises(ModelFileError, match=match) as caught:
        DPSynthesizer.load(path)
    assert str(caught.value).startswith(str(path / "embedding_info.json"))


def test_the_old_import_paths_still_work():
    assert ReExported is ModelFileError
    from dpsynth.synthesizer import (  # noqa: F401
        FORMAT_VERSION,
        MAX_SAMPLE_ROWS,
        SAMPLE_SHARD_ROWS,
        ClusterRelease,
        NotFittedError,
    )


# ------------------------------------------------------------------------ the docs
def test_the_docs_describe_every_file_key_and_array():
    text = DOCS.read_text()
    section = text.split("## Mixture (fit_gmm -> synthesize)", 1)[1].split("\n## ", 1)[0]
    names = [mixture_file.PARAMS_FILE, mixture_file.ARRAYS_FILE,
             mixture_file.EMBEDDING_INFO_FILE, "format_version", "stage", "params",
             "n_features_in", "privacy_plan", "classes", "class_totals", "subspace",
             "cluster_class_counts", "cluster_class_sums", "cluster_trace",
             "cluster_eigenvalues", "cluster_centres", "cluster_centre_counts",
             *mixture_file.MIXTURE_ARRAYS, *mixture_file.EMBEDDING_INFO_KEYS,
             *mixture_file.PARAMS_ADDED_IN_FORMAT_1]
    missing = [name for name in names if f"`{name}`" not in section]
    assert not missing, f"docs/formats.md's mixture section does not describe {missing}"
    assert f"`\"format_version\": {FORMAT_VERSION}`" in section
