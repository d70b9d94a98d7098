"""Config errors are tidy (issue 13, item 6): registry names are checked when the
configuration is validated, listing the available names, and class names may be numbers.

Before, an unknown encoder name reached the run as a 74-line traceback, and digit-named
class folders needed quoted ``class_names``.
"""

from __future__ import annotations

import importlib.metadata

import numpy as np
import pytest
from image_folders import gray_image_folder, image_folder_sets
from typer.testing import CliRunner

from dpsynth.cli import app
from dpsynth.config import ConfigError, load_config, load_config_text
from dpsynth.encoders import Encoder, register_encoder
from dpsynth.encoders import base as encoder_base
from dpsynth.preflight import PreflightError, preflight
from dpsynth.registry import name_problem


@pytest.mark.parametrize("sets, line", [
    (["encoder.name=nope"], "encoder.name: unknown encoder 'nope'; available: "),
    (["decode.decoder=nope"], "decode.decoder: unknown decoder 'nope'; available: "),
    (["model.components_per_class=2", "model.clusterer=nope"],
     "model.clusterer: unknown clusterer 'nope'; available: dp-kmeans"),
])
def test_unknown_registry_names_are_one_line_listing_the_available_ones(sets, line):
    with pytest.raises(ConfigError) as info:
        load_config(None, sets)
    message = str(info.value)
    assert message.startswith("invalid configuration (defaults + --set): ")
    assert line in message and "\n" not in message
    assert "(got 'nope')" not in message  # the message names it once


def test_the_available_names_come_from_the_registry():
    message = name_problem("encoder", "nope")
    for name in ("efficientnet-lite0", "open_clip", "pixels"):
        assert name in message
    assert "pixels" in name_problem("decoder", "nope")
    assert name_problem("encoder", "pixels") is None
    # Parametrised encoder names are checked by their prefix.
    assert name_problem("encoder", "open_clip:ViT-B-32:laion2b_s34b_b79k") is None
    assert "unknown encoder 'nope:x'" in name_problem("encoder", "nope:x")


def test_a_newly_registered_encoder_passes_validation():
    class Ones(Encoder):
        name = "test-ones"
        dim = 2

        def encode_batch(self, images: np.ndarray) -> np.ndarray:
            return np.ones((len(images), 2), np.float32)

    with pytest.raises(ConfigError, match="unknown encoder 'test-ones'"):
        load_config(None, ["encoder.name=test-ones"])
    register_encoder("test-ones")(Ones)
    try:
        assert load_config(None, ["encoder.name=test-ones"]).encoder.name == "test-ones"
        assert "test-ones" in name_problem("encoder", "nope")
    finally:
        encoder_base.ENCODERS.unregister("test-ones")


def test_a_clusterer_is_checked_only_when_it_is_used():
    # One component per class uses no clusterer (as DPSynthesizer, which does not look
    # it up then): a plugin clusterer named in a shared config need not be installed.
    assert load_config(None, ["model.clusterer=nope"]).model.clusterer == "nope"


def test_a_plugin_that_fails_to_load_is_named_not_a_traceback(monkeypatch):
    declared = [importlib.metadata.EntryPoint(
        "broken-encoder", "no_such_module_anywhere:factory", "dpsynth.encoders")]
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group=None: declared if group == "dpsynth.encoders" else [])
    try:
        with pytest.raises(ConfigError) as info:
            load_config(None, ["encoder.name=broken-encoder"])
        message = str(info.value)
        assert "encoder.name: the encoder plugin 'broken-encoder'" in message
        assert "failed to load: ModuleNotFoundError" in message
        # Another name is still found, and the broken one is not offered.
        assert load_config(None, ["encoder.name=pixels"]).encoder.name == "pixels"
        assert "broken-encoder" not in name_problem("encoder", "nope")
    finally:
        encoder_base.ENCODERS.unregister("broken-encoder")


def test_an_unknown_encoder_on_the_command_line_is_one_line_and_charges_nothing(
        tmp_path, charges):
    result = CliRunner().invoke(app, ["run", "--out", str(tmp_path / "out"),
                                      "--set", "encoder.name=no-such-encoder"])
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: invalid configuration")
    assert "encoder.name: unknown encoder 'no-such-encoder'; available: " in result.stderr
    assert "Traceback" not in result.output
    assert charges == [] and not (tmp_path / "out").exists()


# ----------------------------------------------------------------- numeric class names
def test_class_names_may_be_numbers_in_yaml():
    text = ("data: {source: webdataset, train_urls: a.tar, test_urls: b.tar, image_size: 8,\n"
            "       class_names: [0, 1, '2', 10]}\n")
    assert load_config_text(text).data.class_names == ["0", "1", "2", "10"]
    assert load_config(None, ["data.source=webdataset", "data.train_urls=a.tar",
                              "data.test_urls=b.tar", "data.image_size=8",
                              "data.class_names=[3, 4]"]).data.class_names == ["3", "4"]


@pytest.mark.parametrize("value", ["yes", "1.5", "~"])
def test_class_names_that_yaml_reads_as_something_else_must_be_quoted(value):
    with pytest.raises(ConfigError, match="quote it in YAML"):
        load_config(None, ["data.source=webdataset", "data.train_urls=a.tar",
                           "data.test_urls=b.tar", "data.image_size=8",
                           f"data.class_names=[0, {value}]"])


def test_digit_named_class_folders_pass_the_preflight_unquoted(tmp_path):
    gray_image_folder(tmp_path / "train", classes=("0", "1", "2"), per_class=3)
    gray_image_folder(tmp_path / "test", classes=("0", "1", "2"), per_class=2)
    sets = image_folder_sets(tmp_path, "data.class_names=[0, 1, 2]")
    config = load_config(None, sets[1::2])
    assert config.data.class_names == ["0", "1", "2"]
    preflight(config, None, data_only=True)
    # The names are compared with the folders as text: a list that is not the folders'
    # is still refused by the pre-flight.
    with pytest.raises(PreflightError, match=r"not in class_names \['0', '7'\]"):
        preflight(load_config(None, image_folder_sets(tmp_path, "data.class_names=[0, 7]")
                              [1::2]), None, data_only=True)
