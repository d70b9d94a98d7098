"""The encoder's input resolution is part of the embedding cache key and visible in the
outputs, even when the configuration leaves it to the encoder's default (issue 16)."""

from __future__ import annotations

import pytest

from dpsynth import steps
from dpsynth.config import load_config
from dpsynth.encoders import encoder_options
from dpsynth.encoders.efficientnet import DEFAULT_IMAGE_SIZE
from dpsynth.evaluation.report import write_html_report


def test_defaults_are_filled_in_and_given_options_win():
    assert encoder_options("efficientnet-lite0") == {"image_size": DEFAULT_IMAGE_SIZE}
    assert encoder_options("efficientnet-lite0", {"image_size": 128}) == {"image_size": 128}
    assert encoder_options("efficientnet-lite0", {"device": "cpu"}) == {
        "image_size": DEFAULT_IMAGE_SIZE, "device": "cpu"}
    # An encoder that declares no defaults keeps exactly what was given.
    assert encoder_options("pixels", {"image_shape": [8, 8]}) == {"image_shape": [8, 8]}
    with pytest.raises(KeyError, match="unknown encoder"):
        encoder_options("no-such-encoder")


def _key(*overrides: str) -> dict:
    config = load_config("configs/fashion-mnist.yaml", list(overrides))
    key, _ = steps.encoding_key(config, "test")
    return key


def test_the_cache_key_holds_the_resolved_input_size():
    """Leaving the size out and naming the default are the same embeddings (one entry);
    another size is another entry, so a changed default never reuses old embeddings."""
    default = _key("encoder.options={}")
    assert default["encoder_options"] == {"image_size": DEFAULT_IMAGE_SIZE}
    assert _key(f"encoder.options={{image_size: {DEFAULT_IMAGE_SIZE}}}") == default
    other = _key("encoder.options={image_size: 96}")
    assert other["encoder_options"] == {"image_size": 96} and other != default


def test_the_report_shows_the_encoder_options(tmp_path):
    metrics = {"accuracy": 0.8, "private": True, "epsilon": 1.0, "delta": 1e-5,
               "encoder": "efficientnet-lite0", "encoder_options": {"image_size": 128}}
    text = write_html_report(tmp_path / "report.html", metrics, None, {}).read_text()
    assert "efficientnet-lite0, image_size=128" in text
