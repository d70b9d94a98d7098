"""How many CPU threads dpsynth's own CPU work uses: torch (encoders, the evaluation MLP)
and the sampler's worker threads.

One count for both, sized from what this process may use and what other work already uses:

- the cores it may run on: its CPU affinity (``os.sched_getaffinity``), capped by a cgroup
  v2 CPU quota (``cpu.max``, "quota period", rounded up), which is how a pipeline pod's CPU
  limit shows (a pod limited to 2 CPUs on a 64-core node has an affinity of 64);
- less the cores other work keeps busy: the 1-minute load average (``os.getloadavg``) less
  this process's own recent share of it, rounded to whole cores;
- at least one.

torch's default (one thread per core, however busy the machine is) is the wrong choice on a
shared machine: its threads wait for each other at every operation, so one descheduled
thread stalls all of them (issue 25: 200 evaluation-MLP steps took 42.6 s with torch's 2
threads under a load of 7 on 2 cores, 5.9 s with one thread). The results do not depend on
the count beyond float rounding (the sampler's draws not at all).

A user's choice wins: ``DPSYNTH_THREADS=<n>`` sets the count for both; ``OMP_NUM_THREADS``
(or ``MKL_NUM_THREADS``), which torch reads itself, leaves torch's count alone and also sets
the sampler's. ``DPSYNTH_THREADS=auto`` (or unset) sizes it as above.
"""

from __future__ import annotations

import functools
import math
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

#: The environment variable that chooses the count ("auto" or a number).
ENV = "DPSYNTH_THREADS"
#: Thread counts that torch (through OpenMP or MKL) reads itself at start-up.
TORCH_ENVS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
CPU_MAX = "/sys/fs/cgroup/cpu.max"
#: The load average's time constant (seconds), for this process's own share of it.
LOAD_WINDOW_S = 60.0


def usable_cores(cpu_max: str | Path = CPU_MAX) -> int:
    """The cores this process may run on: its affinity, capped by the cgroup CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = Path(cpu_max).read_text().split()[:2]
        if quota != "max":
            cores = min(cores, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):  # no cgroup v2 file, or one we cannot read
        pass
    return max(1, cores)


def own_load() -> float:
    """This process's own share of the 1-minute load average, estimated from its CPU time
    over its life (an exponential average with the load average's time constant, as if it
    had used the CPU evenly): the load average counts this process's busy threads too, and
    a run that has just been busy must not count itself as other work. 0 where unknown."""
    try:
        stat = Path("/proc/self/stat").read_text()
        start_ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, starttime
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        age = uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0
    if age <= 0:
        return 0.0
    times = os.times()
    busy = (times.user + times.system) / age  # average busy threads over its life
    return busy * (1.0 - math.exp(-age / LOAD_WINDOW_S))


def others_load() -> float:
    """The load other work puts on the machine: the 1-minute load average less this
    process's own share (see :func:`own_load`); 0 where the load average is unknown."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0
    return max(0.0, load - own_load())


def size_threads(cores: int, others: float) -> int:
    """``cores`` less the cores ``others`` (a load) keeps busy, rounded; at least 1."""
    return max(1, min(cores, cores - round(others)))


def _explicit(name: str) -> int | None:
    """A positive integer from environment variable ``name``, or None."""
    value = os.environ.get(name, "").strip()
    try:
        number = int(value)
    except ValueError:
        return None
    return number if number >= 1 else None


def cpu_threads(cap: int | None = None, *, cpu_max: str | Path = CPU_MAX,
                load: float | None = None) -> int:
    """The thread count for dpsynth's CPU work, at most ``cap``: ``DPSYNTH_THREADS`` or
    ``OMP_NUM_THREADS`` when the user set one, else the usable cores less other work's
    load (``load``; the load average when None). See the module docstring."""
    chosen = _explicit(ENV) or _explicit("OMP_NUM_THREADS")
    if chosen is None:
        chosen = size_threads(usable_cores(cpu_max), others_load() if load is None else load)
    return max(1, chosen if cap is None else min(cap, chosen))


_torch_lock = threading.Lock()
_torch_said: str | None = None


def use_torch_threads(say: bool = True) -> str:
    """Set torch's CPU thread count for this process (once: later calls keep it) and, the
    first time, say on stderr what it chose and why. Returns that line.

    Called where dpsynth's steps start torch work (encoding, evaluation): a library user
    who calls torch directly keeps whatever they set."""
    global _torch_said
    with _torch_lock:
        if _torch_said is not None:
            return _torch_said
        import torch

        setting = os.environ.get(ENV, "").strip()
        explicit = _explicit(ENV)
        user_env = next((name for name in TORCH_ENVS if os.environ.get(name)), None)
        if explicit is not None:
            torch.set_num_threads(explicit)
            why = f"{ENV}={explicit}"
        elif user_env is not None:
            why = f"{user_env}={os.environ[user_env]}, which torch reads"
        else:
            cores, others = usable_cores(), others_load()
            torch.set_num_threads(size_threads(cores, others))
            why = (f"{cores} usable cores, load {others:.1f} from other work; {ENV}=<n> "
                   "sets it")
            if setting and setting.lower() != "auto":
                why += f"; {ENV}={setting!r} is neither a number nor 'auto': ignored"
        n = torch.get_num_threads()
        _torch_said = f"dpsynth: torch uses {n} CPU thread{'s' if n != 1 else ''} ({why})"
        if say:
            print(_torch_said, file=sys.stderr, flush=True)
        return _torch_said


F = TypeVar("F", bound=Callable)


def sized_threads(step: F) -> F:
    """Decorator for a step whose work is torch's and numpy's (the evaluation): torch's
    threads as :func:`use_torch_threads` sizes them, and numpy's and scipy's BLAS held to
    the same count while the step runs (restored after: the DP fit's outputs are pinned
    with BLAS's default threads). Under load BLAS's spinning threads stall the same way
    as torch's: the Frechet distance of 10k x 1280 against 60k x 1280 took 30.5 s with 2
    BLAS threads and 12.2 s with one, at a load average of 8 on 2 cores."""

    @functools.wraps(step)
    def run(*args, **kwargs):
        import torch

        from dpsynth.blas_threads import blas_threads

        use_torch_threads()
        with blas_threads(torch.get_num_threads()):
            return step(*args, **kwargs)

    return run  # type: ignore[return-value]


def _reset_for_tests() -> None:
    global _torch_said
    _torch_said = None
