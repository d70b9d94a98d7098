"""Issue 25, item 3: torch's and the sampler's CPU threads are sized to the cores this
process may use less the load of other work, a user's setting wins, and it is said once."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from dpsynth import cpu_threads, steps
from dpsynth.data.store import write_embedding_set


@pytest.fixture
def fresh(monkeypatch):
    """No user setting, torch's count restored and the once-per-process choice forgotten."""
    for name in (cpu_threads.ENV, *cpu_threads.TORCH_ENVS):
        monkeypatch.delenv(name, raising=False)
    before = torch.get_num_threads()
    cpu_threads._reset_for_tests()
    yield monkeypatch
    cpu_threads._reset_for_tests()
    torch.set_num_threads(before)


@pytest.mark.parametrize(("cores", "others", "threads"),
                         [(2, 0.0, 2), (2, 0.4, 2), (2, 0.6, 1), (2, 2.1, 1), (2, 7.0, 1),
                          (16, 7.0, 9), (16, 0.0, 16), (1, 0.0, 1)])
def test_threads_are_the_cores_other_work_leaves(cores, others, threads):
    assert cpu_threads.size_threads(cores, others) == threads


@pytest.mark.parametrize(("content", "cap"), [("200000 100000", 2), ("max 100000", None),
                                              ("garbage", None), (None, None)])
def test_the_cgroup_quota_caps_the_cores(tmp_path, fresh, content, cap):
    import os

    cpu_max = tmp_path / "cpu.max"
    if content is not None:
        cpu_max.write_text(content + "\n")
    cores = len(os.sched_getaffinity(0))
    expected = cores if cap is None else min(cores, cap)
    assert cpu_threads.usable_cores(cpu_max) == expected
    assert cpu_threads.cpu_threads(cpu_max=cpu_max, load=0.0) == expected
    assert cpu_threads.cpu_threads(cpu_max=cpu_max, load=100.0) == 1


def test_a_user_setting_wins(fresh):
    fresh.setenv("OMP_NUM_THREADS", "3")
    assert cpu_threads.cpu_threads(load=100.0) == 3
    assert cpu_threads.cpu_threads(cap=2, load=0.0) == 2
    fresh.setenv(cpu_threads.ENV, "5")
    assert cpu_threads.cpu_threads(load=100.0) == 5
    fresh.setenv(cpu_threads.ENV, "auto")
    assert cpu_threads.cpu_threads(load=100.0) == 3  # OMP_NUM_THREADS again


def test_this_process_does_not_count_its_own_work_as_others(fresh):
    before = cpu_threads.own_load()
    end = time.process_time() + 0.3
    while time.process_time() < end:
        pass
    assert cpu_threads.own_load() > before >= 0.0


def test_torch_threads_follow_the_load_and_are_said_once(fresh, capsys):
    fresh.setattr(cpu_threads, "others_load", lambda: 1000.0)
    line = cpu_threads.use_torch_threads()
    assert torch.get_num_threads() == 1
    assert capsys.readouterr().err == line + "\n"
    assert line.startswith("dpsynth: torch uses 1 CPU thread (") and "load 1000.0" in line
    torch.set_num_threads(2)  # later calls keep the first choice and say nothing
    assert cpu_threads.use_torch_threads() == line
    assert torch.get_num_threads() == 2 and capsys.readouterr().err == ""


def test_torch_threads_leave_a_users_choice_alone(fresh, capsys):
    fresh.setattr(cpu_threads, "others_load", lambda: 1000.0)
    fresh.setenv("OMP_NUM_THREADS", "2")
    torch.set_num_threads(2)  # what torch made of OMP_NUM_THREADS at its start
    assert "OMP_NUM_THREADS=2" in cpu_threads.use_torch_threads()
    assert torch.get_num_threads() == 2
    cpu_threads._reset_for_tests()
    fresh.setenv(cpu_threads.ENV, "1")
    assert "DPSYNTH_THREADS=1" in cpu_threads.use_torch_threads()
    assert torch.get_num_threads() == 1


def test_the_sampler_takes_the_same_count(fresh):
    from dpsynth.gmm.mixture import default_threads

    fresh.setenv(cpu_threads.ENV, "3")
    assert default_threads() == 3
    fresh.delenv(cpu_threads.ENV)
    assert default_threads(load=1000.0) == 1


def test_evaluate_sizes_torch_and_blas_threads_and_restores_blas(tmp_path, fresh):
    from threadpoolctl import threadpool_info

    from dpsynth.config import EvaluateConfig
    from dpsynth.evaluation import fidelity

    def blas():
        return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]

    seen = {}
    real = fidelity.frechet_distance

    def recording(*args):
        seen["torch"], seen["blas"] = torch.get_num_threads(), blas()
        return real(*args)

    fresh.setattr(fidelity, "frechet_distance", recording)
    fresh.setenv(cpu_threads.ENV, "1")
    before = blas()
    rng = np.random.default_rng(0)
    meta = {"encoder": "pixels", "normalized": False, "classes": [0, 1],
            "class_names": ["a", "b"], "key": {}}
    y = np.arange(40) % 2
    X = (rng.normal(size=(40, 4)) + y[:, None]).astype(np.float32)
    write_embedding_set(tmp_path / "syn", X, y, dataset_id="s", synthetic=True, **meta)
    write_embedding_set(tmp_path / "test", X, y, dataset_id="t", **meta)
    steps.evaluate(tmp_path / "syn", tmp_path / "test", tmp_path / "out",
                   settings=EvaluateConfig(steps=2), progress=False)
    assert seen == {"torch": 1, "blas": [1] * len(before)}
    assert blas() == before
