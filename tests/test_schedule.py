"""utils/training/schedule.py: the decays of the learning rate and the --max_minutes plan's arithmetic (the plan inside a
run: tests/test_engine.py)."""
import pytest
import torch

from utils.training.schedule import make_optimizer, set_milestones, steps_that_fit


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
