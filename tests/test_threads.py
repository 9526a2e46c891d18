"""How many torch CPU threads the engine uses (issue 14, item 18; measured in benchmarks/RESULTS.md)."""

from __future__ import annotations

import pytest
import torch

from magnet_rt.devices import cpu_threads


@pytest.fixture
def no_omp_env(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)  # torch's default: the physical cores


def test_a_busy_two_core_machine_gets_one_thread(no_omp_env):
    assert cpu_threads("cpu", cpus=2, load=1.3) == 1
    assert cpu_threads("cpu", cpus=2, load=0.2) == 2


def test_an_idle_machine_gets_the_physical_cores_and_a_loaded_one_what_is_free(no_omp_env):
    assert cpu_threads("cpu", cpus=16, load=0.0) == 8
    assert cpu_threads("cpu", cpus=16, load=10.4) == 6
    assert cpu_threads("cpu", cpus=4, load=9.0) == 1


def test_a_request_wins_then_omp_num_threads_and_an_accelerator_needs_one(no_omp_env, monkeypatch):
    assert cpu_threads("cpu", 3, cpus=2, load=2.0) == 3
    assert cpu_threads("meta", cpus=16, load=0.0) == 1  # any non-CPU device: the CPU only feeds it
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert cpu_threads("cpu", cpus=16, load=0.0) == 8  # what torch read from the environment
