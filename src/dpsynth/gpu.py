"""The GPU steps' refusal to fall back to CPU on the CUDA image (issue 23).

On a node whose NVIDIA driver is older than the CUDA that torch was built for,
``torch.cuda.is_available()`` is False and an encoder built with ``device=None`` picks the
CPU: a pipeline encode then runs for hours instead of failing. The CUDA image sets
``DPSYNTH_REQUIRE_CUDA=1``; there, encode and decode stop before any work with a message
that names torch's CUDA version and what the node's driver offers, unless the run allows
CPU (``encoder.allow_cpu`` / ``decode.allow_cpu``, the pipeline parameters
``encode_allow_cpu`` / ``decode_allow_cpu``), in which case they warn and go on. Without
the variable (a laptop's ``dpsynth run``, the CPU image's plan) nothing changes: CPU when
there is no GPU.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import warnings

#: Set (to 1) by components/Dockerfile.cuda: the GPU steps must find a usable GPU.
REQUIRE_CUDA_ENV = "DPSYNTH_REQUIRE_CUDA"
#: The driver library the NVIDIA container runtime mounts into a GPU pod.
LIBCUDA = "libcuda.so.1"
#: Per GPU step: the config key that allows CPU and the pipeline parameter that sets it
#: (dpsynth_kfp.parameters; a test checks that the two tables agree, since dpsynth never
#: imports dpsynth_kfp).
ALLOW_CPU: dict[str, tuple[str, str]] = {
    "encode": ("encoder.allow_cpu", "encode_allow_cpu"),
    "decode": ("decode.allow_cpu", "decode_allow_cpu"),
}


class CudaUnavailableError(RuntimeError):
    """A GPU step on the CUDA image found no usable GPU, and CPU was not allowed."""


class CpuFallbackWarning(UserWarning):
    """A GPU step on the CUDA image runs on CPU because the run allowed it."""


def cuda_required() -> bool:
    """Whether this process runs on the CUDA image ($DPSYNTH_REQUIRE_CUDA set to a true
    value: 1, true, yes, on)."""
    return os.environ.get(REQUIRE_CUDA_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _version(text: str | None) -> tuple[int, int] | None:
    m = re.match(r"\s*(\d+)\.(\d+)", text or "")
    return (int(m[1]), int(m[2])) if m else None


def _libcuda_version() -> tuple[int, int] | None:
    """The CUDA version the driver supports (cuDriverGetVersion, which needs no cuInit and
    no GPU), or None when the library is absent or does not answer."""
    try:
        lib = ctypes.CDLL(LIBCUDA)
    except OSError:
        return None
    version = ctypes.c_int(0)
    if lib.cuDriverGetVersion(ctypes.pointer(version)) != 0 or version.value <= 0:
        return None
    return version.value // 1000, (version.value % 1000) // 10


def _nvidia_smi() -> tuple[str, tuple[int, int] | None] | None:
    """(what nvidia-smi says of the driver, the CUDA version it supports), or None when
    there is no nvidia-smi."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        done = subprocess.run([exe], capture_output=True, text=True, timeout=20, check=False)
    except subprocess.TimeoutExpired:
        return "nvidia-smi did not answer within 20 s", None
    text = f"{done.stdout}\n{done.stderr}"
    cuda = re.search(r"CUDA Version\s*:\s*(\d+\.\d+)", text)
    driver = re.search(r"Driver Version\s*:\s*([\d.]+)", text)
    if cuda:
        return (f"NVIDIA driver {driver[1] if driver else '(version unknown)'} supports "
                f"CUDA {cuda[1]} (nvidia-smi)"), _version(cuda[1])
    first = next((line.strip() for line in text.splitlines() if line.strip()), "no output")
    return f"nvidia-smi failed (exit status {done.returncode}): {first[:200]}", None


def driver_cuda_version() -> tuple[str, tuple[int, int] | None]:
    """(a line saying what the node's NVIDIA driver offers, the CUDA version it supports or
    None): from libcuda.so.1's cuDriverGetVersion, else nvidia-smi, else "no NVIDIA driver
    found". Never raises: it only feeds an error message."""
    try:
        version = _libcuda_version()
        if version is not None:
            return (f"NVIDIA driver supports CUDA {version[0]}.{version[1]} "
                    f"({LIBCUDA} cuDriverGetVersion)"), version
        smi = _nvidia_smi()
        if smi is not None:
            return smi
        return f"no NVIDIA driver found (no {LIBCUDA}, no nvidia-smi)", None
    except Exception as exc:  # noqa: BLE001 - a broken probe must not hide the refusal
        return f"NVIDIA driver unknown ({type(exc).__name__}: {exc})", None


def _torch_cuda() -> tuple[bool, str | None]:
    """(whether torch has a usable GPU, the CUDA version torch was built for)."""
    import torch

    return bool(torch.cuda.is_available()), getattr(torch.version, "cuda", None)


def _diagnosis(step: str) -> tuple[str, str] | None:
    """None when GPU step ``step`` may run as it is (off the CUDA image, or with a usable
    GPU); else (what is wrong, naming torch's CUDA and the driver's; what to do)."""
    if not cuda_required():
        return None
    available, torch_cuda = _torch_cuda()
    if available:
        return None
    driver, driver_version = driver_cuda_version()
    needed = _version(torch_cuda)
    built = (f"torch is built for CUDA {torch_cuda} (torch.version.cuda)" if torch_cuda else
             "torch is a CPU-only build (torch.version.cuda is None)")
    what = (f"{step} needs a GPU on the CUDA image ({REQUIRE_CUDA_ENV}=1), but torch finds "
            f"none (torch.cuda.is_available() is False): {built}; on this node: {driver}.")
    if needed is None:
        fix = "install torch's CUDA build in the image"
    elif driver_version is not None and driver_version < needed:
        fix = (f"the node's driver is older than torch's CUDA: run on a node whose driver "
               f"supports CUDA {torch_cuda} or newer")
    else:
        fix = ("check that the task got a GPU (an nvidia.com/gpu request on a GPU node, "
               f"CUDA_VISIBLE_DEVICES) and a driver that supports CUDA {torch_cuda}")
    return what, fix


def cuda_problem(step: str) -> str | None:
    """None when GPU step ``step`` ("encode" or "decode") may run as it is: off the CUDA
    image, or with a usable GPU. Otherwise the refusal: why it would run on CPU (torch's
    CUDA version, the driver's), what to do, and the key and parameter that allow CPU."""
    found = _diagnosis(step)
    if found is None:
        return None
    what, fix = found
    key, parameter = ALLOW_CPU[step]
    return (f"{what} Fix: {fix}; or set {key}: true (pipeline parameter {parameter}) to "
            f"{step} on CPU, which can take hours.")


def require_cuda(step: str, *, allow_cpu: bool) -> None:
    """Stop GPU step ``step`` before any work when it would silently run on CPU
    (:func:`cuda_problem`): raise :class:`CudaUnavailableError`, or with ``allow_cpu``
    warn (:class:`CpuFallbackWarning`) and return."""
    if not allow_cpu:
        problem = cuda_problem(step)
        if problem is not None:
            raise CudaUnavailableError(problem)
        return
    found = _diagnosis(step)
    if found is not None:
        warnings.warn(f"{step} runs on CPU, which can take hours, because "
                      f"{ALLOW_CPU[step][0]} is true. {found[0]}", CpuFallbackWarning,
                      stacklevel=2)
