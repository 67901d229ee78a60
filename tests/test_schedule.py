"""utils/training/schedule.py: the decays of the learning rate and the --max_minutes plan's arithmetic (the plan inside a
run: tests/test_engine.py)."""
from types import SimpleNamespace

import pytest
import torch

from utils.training.schedule import (Budget, make_optimizer, recent_step_s, set_milestones, should_stop,
                                     steps_that_fit)


def test_schedule_decays_at_80_and_90_percent_of_the_steps():
    optimizer, scheduler = make_optimizer(torch.nn.Linear(1, 1), 1.0, total_steps=10)
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[:8] == [1.0] * 8 and lrs[8] == pytest.approx(0.2) and lrs[9] == pytest.approx(0.04)


def test_steps_that_fit_pay_each_step_its_share_of_checkpoints_and_the_last_in_full():
    assert steps_that_fit(100, 1.0, 0.0, 10) == 100
    assert steps_that_fit(100, 1.0, 10.0, 10) == 45  # (100 - 10) / (1 + 1)
    assert steps_that_fit(5, 1.0, 10.0, 10) == 0


def test_set_milestones_moves_the_decays_after_the_current_step():
    optimizer, scheduler = make_optimizer(torch.nn.Linear(1, 1), 1.0, total_steps=1000)
    assert set_milestones(scheduler, 100, 0) == 100 and sorted(scheduler.milestones) == [80, 90]
    assert set_milestones(scheduler, 10, 20) > 22 and min(scheduler.milestones) == 21


def test_recent_step_s_measures_the_pace_since_a_plan_at_least_20_steps_back_without_checkpoints():
    b = Budget(600, train_start=0.0, first_step=0, marks=[(40.0, 20, 0.0), (50.0, 40, 0.0)])  # 2 s, then 0.5 s
    assert recent_step_s(b, 60.0, 60) == pytest.approx(0.5)  # since step 40
    assert recent_step_s(b, 55.0, 50) == pytest.approx(0.5)  # step 40 is too near: since step 20
    assert recent_step_s(b, 15.0, 10) == pytest.approx(1.5)  # no plan far enough: since the first step
    b.checkpoints_s = 4.0  # a checkpoint since step 40 is not a step's time
    assert recent_step_s(b, 60.0, 60) == pytest.approx(0.3)


def test_should_stop_while_the_budget_still_pays_the_last_checkpoint():
    b = Budget(100.0, clock=lambda: 95.0, start=0.0, max_steps=1000, total_steps=1000, checkpoint_s=3.0)
    run, state = SimpleNamespace(budget=b, stop=None, world=1), SimpleNamespace(step=10)
    assert should_stop(run, state) == [False, False]  # 95 s + a 3 s checkpoint (3.9 s with its margin) < 100 s
    b.checkpoint_s = 4.0
    assert should_stop(run, state) == [True, False]  # a 4 s checkpoint might take 5.2 s, past 100 s: stop now
