"""Specification of refdiff.run_config's step loop: its time budget counts the clock the config names."""

import time
from typing import NamedTuple

import pytest

from refdiff.run_config import CLOCKS, run_steps
from refdiff.vae_train import VAETrainConfig


class Budget(NamedTuple):
    steps: int
    max_seconds: float
    budget_clock: str


def _steps_done(clock: str, seconds: float, steps: int, work) -> dict:
    info = {}
    for _ in run_steps(Budget(steps, seconds, clock), "test", False, info):
        work()
    return info


def test_a_cpu_budget_does_not_count_time_spent_waiting_and_a_wall_budget_does():
    """Steps that sleep 20 ms each: a wall-clock budget of 0.1 s stops after at most 6 of them (5 if sleeps are
    exact), a CPU budget of 0.1 s runs all 20 (sleeping takes no CPU time); info reports wall and CPU seconds."""
    wall = _steps_done("wall", 0.1, 20, lambda: time.sleep(0.02))
    cpu = _steps_done("cpu", 0.1, 20, lambda: time.sleep(0.02))
    assert 1 <= wall["steps_done"] <= 6 and cpu["steps_done"] == 20
    assert cpu["train_seconds"] >= 0.4 and 0 <= cpu["train_cpu_seconds"] < cpu["train_seconds"]


def test_a_cpu_budget_stops_a_busy_loop_after_its_cpu_seconds():
    """Steps that spin 10 ms of CPU each: a CPU budget of 0.05 s stops after 5 to 6 of 50 steps, having spent at
    least 0.05 CPU seconds."""
    def spin():
        end = time.process_time() + 0.01
        while time.process_time() < end:
            pass

    info = _steps_done("cpu", 0.05, 50, spin)
    assert 5 <= info["steps_done"] <= 6 and info["train_cpu_seconds"] >= 0.05


def test_an_unknown_budget_clock_is_refused_naming_the_choices():
    """budget_clock must be one of CLOCKS ("wall", "cpu")."""
    assert set(CLOCKS) == {"wall", "cpu"}
    with pytest.raises(ValueError, match="budget_clock must be one of wall, cpu, got 'gpu'"):
        VAETrainConfig(budget_clock="gpu")
