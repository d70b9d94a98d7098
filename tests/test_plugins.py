"""Swapping by name: encoders, decoders and CLI groups from other packages' entry points."""

from __future__ import annotations

import importlib.metadata

import numpy as np
import pytest

from dpsynth.decoders import base as decoder_base
from dpsynth.decoders import decoder_for, get_decoder
from dpsynth.encoders import Encoder, available_encoders, get_encoder
from dpsynth.encoders import base as encoder_base


class MeanPixelEncoder(Encoder):
    """What a third-party package would ship: a public, frozen map (here: row means)."""

    name = "row-means"

    def __init__(self, rows: int = 8) -> None:
        self.rows = rows

    @property
    def dim(self) -> int:
        return self.rows

    def encode_batch(self, images: np.ndarray) -> np.ndarray:
        return images.mean(axis=2).astype(np.float32) / 255.0


def make_row_means(**kwargs) -> MeanPixelEncoder:
    return MeanPixelEncoder(**kwargs)


@pytest.fixture
def plugin_entry_points(monkeypatch):
    declared = {
        "dpsynth.encoders": [importlib.metadata.EntryPoint(
            "row-means", "test_plugins:make_row_means", "dpsynth.encoders")],
        "dpsynth.decoders": [importlib.metadata.EntryPoint(
            "pixels-again", "dpsynth.decoders.pixels:_make_pixels", "dpsynth.decoders")],
    }
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group=None: declared.get(group, []))
    yield
    encoder_base.ENCODERS.unregister("row-means")
    decoder_base.DECODERS.unregister("pixels-again")


def test_an_encoder_declared_by_entry_point_is_found_by_name(plugin_entry_points):
    assert "row-means" in available_encoders()
    enc = get_encoder("row-means", rows=8)
    out = enc.encode(np.full((3, 8, 8), 255, np.uint8))
    assert out.shape == (3, 8) and np.allclose(out, 1.0)


def test_a_decoder_declared_by_entry_point_is_found_by_name(plugin_entry_points):
    assert get_decoder("pixels-again", image_shape=(2, 2)).decode(np.zeros((1, 4))).shape == \
        (1, 2, 2)
    assert decoder_for("row-means") is None  # nothing declared that it inverts


def test_unknown_names_list_what_is_available():
    with pytest.raises(KeyError, match="available: .*pixels"):
        get_encoder("no-such-encoder")


def test_the_pipeline_commands_come_from_the_cli_entry_point():
    eps = [ep for ep in importlib.metadata.entry_points(group="dpsynth.cli")]
    assert [ep.value for ep in eps] == ["dpsynth_kfp.cli:app"]
    from typer.testing import CliRunner

    from dpsynth.cli import app

    assert "compile" in CliRunner().invoke(app, ["pipeline", "--help"]).output


def test_the_library_never_imports_the_kubeflow_binding():
    """DESIGN.md's layering: components and pipelines import dpsynth, never the reverse.
    The files are found from the package itself, wherever pytest runs from."""
    import re
    from pathlib import Path

    import dpsynth

    imports = re.compile(r"^\s*(from|import)\s+(dpsynth_kfp|kfp)\b", re.MULTILINE)
    files = list(Path(dpsynth.__file__).parent.rglob("*.py"))
    assert len(files) > 20 and any(p.name == "runner.py" for p in files)  # not vacuous
    offenders = [str(p) for p in files if imports.search(p.read_text())]
    assert offenders == []


class OffsetClusterer:
    """A toy third-party clusterer: two centres per class at public offsets around the
    released class centre. It reads no data, so it releases nothing and costs nothing."""

    @classmethod
    def release_specs(cls, radius, weights, *, spread: float = 0.1):
        return []

    def __init__(self, n_clusters, plan, noise, *, radius, random_state, spread=0.1):
        self.n_clusters, self.spread = n_clusters, spread

    def fit(self, source, class_centres, class_counts):
        offsets = self.spread * np.eye(class_centres.shape[1])[: self.n_clusters]
        self.centres_ = [c + offsets for c in class_centres]
        return self


def test_a_clusterer_declared_by_entry_point_places_the_components(monkeypatch):
    from dpsynth import DPSynthesizer
    from dpsynth.clustering import registry

    declared = [importlib.metadata.EntryPoint("offsets", "test_plugins:OffsetClusterer",
                                              "dpsynth.clusterers")]
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group=None: declared if group == "dpsynth.clusterers" else [])
    registry.CLUSTERERS.unregister("offsets")
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 500)
    X = rng.normal(size=(1000, 6)) + 3 * np.eye(6)[y]
    synth = DPSynthesizer(4.0, 1e-5, components_per_class=2, clusterer="offsets",
                          clusterer_options={"spread": 0.2}, subspace_dim=3, random_state=0)
    synth.fit(X, y, classes=[0, 1])
    names = {r.name for r in synth.privacy_plan_.releases}
    assert not names & {"lsh_level_counts", "lloyd_counts"}  # dp-kmeans was not used
    assert {"component_counts", "component_sums"} <= names
    assert isinstance(synth.clusterer_, OffsetClusterer)
    assert len(synth.mixture_.component_class) == 4
    registry.CLUSTERERS.unregister("offsets")
    with pytest.raises(ValueError, match="unknown clusterer 'nope'"):
        DPSynthesizer(1.0, 1e-5, components_per_class=2, clusterer="nope").make_plan(6)
