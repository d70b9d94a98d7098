"""Issue 23, defect 4: on the CUDA image (``DPSYNTH_REQUIRE_CUDA=1``) the GPU steps refuse
to fall back to CPU silently. The refusal comes before any record is read and names
torch's CUDA version and what the node's driver offers; ``encoder.allow_cpu`` /
``decode.allow_cpu`` (pipeline parameters ``encode_allow_cpu`` / ``decode_allow_cpu``)
let them run on CPU with a warning; without the variable nothing changes.

This machine has no GPU, so ``torch.cuda.is_available()`` is False here; it is patched
anyway so that the tests hold on a machine with one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings

import pytest
import torch

from dpsynth import gpu, steps
from dpsynth.config import load_config
from dpsynth.data.store import EmbeddingSet
from dpsynth.step_graph import step

SMI_HEADER = """\
+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 550.54.15              Driver Version: 550.54.15      CUDA Version: 12.4     |
|-----------------------------------------+------------------------+----------------------+
"""
#: Found before a test empties PATH (to hide any real nvidia-smi).
CC = shutil.which("cc") or shutil.which("gcc")
PATH = os.environ.get("PATH", "")


@pytest.fixture
def no_driver(monkeypatch, tmp_path):
    """No libcuda.so.1 and no nvidia-smi (an empty PATH): "no NVIDIA driver found"."""
    monkeypatch.setattr(gpu, "LIBCUDA", str(tmp_path / "absent" / "libcuda.so.1"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))


@pytest.fixture
def cuda_image(monkeypatch, no_driver):
    """The CUDA image on a node where torch finds no usable GPU."""
    monkeypatch.setenv(gpu.REQUIRE_CUDA_ENV, "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def laptop(monkeypatch):
    """`dpsynth run` on a machine without a GPU and not in the CUDA image."""
    monkeypatch.delenv(gpu.REQUIRE_CUDA_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def reads(monkeypatch):
    """Records every use of the data source: the refusal must come before the first."""
    used: list[str] = []
    real = steps.make_source

    def recording(data, split):
        used.append(split)
        return real(data, split)

    monkeypatch.setattr(steps, "make_source", recording)
    return used


def _config(tmp_path, *extra):
    return load_config("configs/digits-quick.yaml",
                       [f"encoder.cache_dir={tmp_path / 'cache'}", "data.limit=40",
                        "encoder.shard_rows=16", *extra])


def _expected_line() -> str:
    return (f"torch is built for CUDA {torch.version.cuda} (torch.version.cuda)"
            if torch.version.cuda else
            "torch is a CPU-only build (torch.version.cuda is None)")


# ------------------------------------------------------------------------------ encode
def test_encode_on_the_cuda_image_without_a_gpu_refuses_before_reading_a_record(
        cuda_image, reads, tmp_path):
    config = _config(tmp_path)
    with pytest.raises(gpu.CudaUnavailableError) as err:
        steps.encode(config, "train", progress=False)
    message = str(err.value)
    assert reads == []  # not even listed: no image was read
    assert not (tmp_path / "cache").exists()
    assert _expected_line() in message
    assert "torch.cuda.is_available() is False" in message
    assert f"on this node: no NVIDIA driver found (no {gpu.LIBCUDA}, no nvidia-smi)" in message
    assert "encoder.allow_cpu: true (pipeline parameter encode_allow_cpu)" in message


def test_encode_allowed_on_cpu_warns_and_encodes(cuda_image, reads, tmp_path):
    config = _config(tmp_path, "encoder.allow_cpu=true")
    with pytest.warns(gpu.CpuFallbackWarning, match="encoder.allow_cpu is true") as caught:
        es = steps.encode(config, "train", progress=False)
    assert es.count == 40 and reads
    (warning,) = [w for w in caught if w.category is gpu.CpuFallbackWarning]
    assert _expected_line() in str(warning.message)
    assert "no NVIDIA driver found" in str(warning.message)


def test_encode_off_the_cuda_image_runs_on_cpu_as_before(laptop, tmp_path):
    config = _config(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", gpu.CpuFallbackWarning)
        es = steps.encode(config, "train", progress=False)
    assert es.count == 40


@pytest.mark.parametrize("value", ["0", "", "false", "no"])
def test_the_variable_set_to_false_is_off(monkeypatch, value):
    monkeypatch.setenv(gpu.REQUIRE_CUDA_ENV, value)
    assert not gpu.cuda_required()
    assert gpu.cuda_problem("encode") is None


def test_a_usable_gpu_passes(monkeypatch):
    monkeypatch.setenv(gpu.REQUIRE_CUDA_ENV, "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    gpu.require_cuda("encode", allow_cpu=False)  # nothing raised


def test_the_message_says_when_the_driver_is_too_old(cuda_image, monkeypatch):
    monkeypatch.setattr(gpu, "_torch_cuda", lambda: (False, "13.0"))
    monkeypatch.setattr(gpu, "driver_cuda_version", lambda: (
        "NVIDIA driver supports CUDA 12.4 (libcuda.so.1 cuDriverGetVersion)", (12, 4)))
    message = gpu.cuda_problem("encode")
    assert ("torch is built for CUDA 13.0 (torch.version.cuda); on this node: NVIDIA driver "
            "supports CUDA 12.4 (libcuda.so.1 cuDriverGetVersion).") in message
    assert "older than torch's CUDA: run on a node whose driver supports CUDA 13.0" in message


# ------------------------------------------------------------------------------ decode
def test_decode_on_the_cuda_image_without_a_gpu_refuses_before_opening_the_set(
        cuda_image, tmp_path):
    config = _config(tmp_path)
    # No synthetic set there at all: opening it would fail with another error.
    with pytest.raises(gpu.CudaUnavailableError) as err:
        steps.decode(tmp_path / "no-such-set", tmp_path / "decoded",
                     **step("decode").kwargs(config))
    assert "decode.allow_cpu: true (pipeline parameter decode_allow_cpu)" in str(err.value)
    assert _expected_line() in str(err.value)
    assert not (tmp_path / "decoded").exists()


def test_decode_allowed_on_cpu_warns_and_decodes(cuda_image, tmp_path):
    config = _config(tmp_path, "decode.allow_cpu=true", "encoder.allow_cpu=true")
    with pytest.warns(gpu.CpuFallbackWarning):
        train = steps.encode(config, "train", progress=False)
    X, y = EmbeddingSet.open(train.path).load()
    # Decoding the (real) embeddings stands in for a synthetic set: any set decodes.
    with pytest.warns(gpu.CpuFallbackWarning, match="decode.allow_cpu is true"):
        out = steps.decode(train.path, tmp_path / "decoded",
                           **step("decode").kwargs(config))
    assert (out / "grid.png").is_file()


# --------------------------------------------------------------------------- pre-flight
def test_dpsynth_run_in_the_cuda_image_is_refused_before_the_charge(cuda_image, tmp_path):
    from dpsynth.preflight import PreflightError, preflight

    with pytest.raises(PreflightError, match="encoder.allow_cpu: true"):
        preflight(_config(tmp_path), tmp_path / "out")
    # decode runs too (pixels has a decoder): refused as well once encode is allowed
    with pytest.raises(PreflightError, match="decode.allow_cpu: true"):
        preflight(_config(tmp_path, "encoder.allow_cpu=true"), tmp_path / "out")
    with warnings.catch_warnings():
        warnings.simplefilter("error", gpu.CpuFallbackWarning)  # warned by the steps only
        preflight(_config(tmp_path, "encoder.allow_cpu=true", "decode.enabled=false"),
                  tmp_path / "out")


def test_the_plan_pods_preflight_on_the_cpu_image_does_not_trip(laptop, tmp_path):
    from dpsynth.preflight import preflight

    preflight(_config(tmp_path), None)  # the CPU image does not set the variable


# --------------------------------------------------------------------- config, pipeline
def test_allow_cpu_is_a_validated_config_key(tmp_path):
    from dpsynth.config import ConfigError

    assert _config(tmp_path).encoder.allow_cpu is False
    assert _config(tmp_path).decode.allow_cpu is False
    with pytest.raises(ConfigError, match="encoder.allow_cpu"):
        _config(tmp_path, "encoder.allow_cpu=maybe")


def test_the_pipeline_parameters_set_the_keys_the_message_names():
    from dpsynth_kfp.parameters import BY_NAME, PARAMETERS, for_key, settings

    for step_name, (key, parameter) in gpu.ALLOW_CPU.items():
        p = for_key(key)
        assert p.name == parameter and p.type is bool and p.default is False
        assert key in p.description
        values = {q.name: q.default for q in PARAMETERS}
        assert key not in settings(values)  # default: the config's own
        values[BY_NAME[parameter].name] = True
        assert settings(values)[key] is True
        assert step(step_name).device == "cuda"


# ---------------------------------------------------------------- the driver version
def test_no_driver_at_all(no_driver):
    assert gpu.driver_cuda_version() == (
        f"no NVIDIA driver found (no {gpu.LIBCUDA}, no nvidia-smi)", None)


def _fake_libcuda(tmp_path, version: int, rc: int = 0) -> str:
    if CC is None:
        pytest.skip("no C compiler to build a fake libcuda.so.1")
    src = tmp_path / "fake_cuda.c"
    src.write_text(f"int cuDriverGetVersion(int *v) {{ *v = {version}; return {rc}; }}\n")
    lib = tmp_path / "libcuda.so.1"
    subprocess.run([CC, "-shared", "-fPIC", "-o", str(lib), str(src)], check=True,
                   env={**os.environ, "PATH": PATH})  # the compiler's own tools
    return str(lib)


def test_the_driver_version_from_libcuda(no_driver, monkeypatch, tmp_path):
    monkeypatch.setattr(gpu, "LIBCUDA", _fake_libcuda(tmp_path, 12040))
    line, version = gpu.driver_cuda_version()
    assert version == (12, 4)
    assert line.startswith("NVIDIA driver supports CUDA 12.4 (") and "cuDriverGetVersion" in line


def _fake_smi(tmp_path, monkeypatch, output: str, status: int = 0) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "nvidia-smi"
    exe.write_text(f"#!{sys.executable}\nimport sys\nsys.stdout.write({output!r})\n"
                   f"sys.exit({status})\n")
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))


def test_the_driver_version_from_nvidia_smi_when_libcuda_fails(no_driver, monkeypatch,
                                                              tmp_path):
    # A libcuda that answers with an error code: nvidia-smi is asked next.
    monkeypatch.setattr(gpu, "LIBCUDA", _fake_libcuda(tmp_path, 0, rc=999))
    _fake_smi(tmp_path, monkeypatch, SMI_HEADER)
    assert gpu.driver_cuda_version() == (
        "NVIDIA driver 550.54.15 supports CUDA 12.4 (nvidia-smi)", (12, 4))


def test_a_failing_nvidia_smi_is_quoted(no_driver, monkeypatch, tmp_path):
    _fake_smi(tmp_path, monkeypatch, "NVIDIA-SMI has failed because it couldn't communicate "
                                     "with the NVIDIA driver.\n", status=9)
    line, version = gpu.driver_cuda_version()
    assert version is None
    assert line == ("nvidia-smi failed (exit status 9): NVIDIA-SMI has failed because it "
                    "couldn't communicate with the NVIDIA driver.")


def test_a_broken_probe_never_crashes_the_message(cuda_image, monkeypatch):
    def broken():
        raise AttributeError("undefined symbol: cuDriverGetVersion")

    monkeypatch.setattr(gpu, "_libcuda_version", broken)
    line, version = gpu.driver_cuda_version()
    assert version is None and line == (
        "NVIDIA driver unknown (AttributeError: undefined symbol: cuDriverGetVersion)")
    with pytest.raises(gpu.CudaUnavailableError, match="NVIDIA driver unknown"):
        gpu.require_cuda("encode", allow_cpu=False)
