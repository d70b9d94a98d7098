"""A run builds its encoder once (issue 24, item 3): the pre-flight, the plan (its
dimension), both splits' encode and the image-level evaluation share one instance."""

from __future__ import annotations

import pytest

from dpsynth import runner
from dpsynth.config import load_config
from dpsynth.encoders import PixelEncoder, register_encoder
from dpsynth.encoders.base import ENCODERS

BUILT: list[dict] = []


@pytest.fixture
def counting_encoder():
    """``pixels`` under another name, counting how often it is constructed."""

    @register_encoder("counting-pixels")
    def _make(**options) -> PixelEncoder:
        BUILT.append(options)
        encoder = PixelEncoder(**options)
        encoder.name = "counting-pixels"
        return encoder

    BUILT.clear()
    yield BUILT
    ENCODERS.unregister("counting-pixels")


def test_a_run_builds_its_encoder_once(counting_encoder, tmp_path):
    config = load_config("configs/digits-quick.yaml", [
        "encoder.name=counting-pixels", "encoder.options={image_shape: [8, 8]}",
        f"encoder.cache_dir={tmp_path / 'cache'}", "evaluate.steps=20",
        "evaluate.image_level=false", "decode.enabled=false", "synthesize.n=500",
        f"tracking.uri=sqlite:///{tmp_path / 'm.db'}"])
    result = runner.run(config, tmp_path / "out", progress=False, echo=lambda _: None)
    assert result.metrics["encoder"] == "counting-pixels"
    assert counting_encoder == [{"image_shape": [8, 8]}]  # one construction, not four


def test_other_options_build_another_encoder(counting_encoder):
    from dpsynth import steps

    a = load_config("configs/digits-quick.yaml", ["encoder.name=counting-pixels",
                                                  "encoder.options={image_shape: [8, 8]}"])
    b = load_config("configs/digits-quick.yaml", ["encoder.name=counting-pixels",
                                                  "encoder.options={image_shape: [4, 16]}"])
    assert steps.make_encoder(a) is steps.make_encoder(a)
    assert steps.make_encoder(b).dim == 64 and len(counting_encoder) == 2
