"""utils/training/engine.py pieces on their own (the whole run is tested through train.main in test_train.py)."""
import pytest
import torch

from model import DRAEM
from tests.conftest import write_images
from utils.config import Config
from utils.training.engine import Diverged, TrainState, epoch_label, loss_values, run_epochs, setup_run
from utils.training.resume import load_resume_state, save_resume_state
from utils.training.schedule import make_optimizer, planned_epochs


def _state(seed):
    torch.manual_seed(seed)
    model = DRAEM(4, 2).init_weights()
    optimizer, scheduler = make_optimizer(model, 0.001, total_steps=10)
    return TrainState(model, optimizer, scheduler, torch.Generator().manual_seed(seed),
                      torch.Generator().manual_seed(seed + 1))


def test_diverging_loss_raises_naming_the_step():
    with pytest.raises(Diverged, match="step 7"):
        loss_values({"loss": torch.tensor(float("nan"))}, 7, "ckpt")
    assert loss_values({"loss": torch.tensor(0.5)}, 1, "ckpt") == {"loss": 0.5}


def test_resume_state_round_trip(tmp_path):
    saved = _state(0)
    saved.epoch, saved.step, saved.best, saved.run_dir = 3, 42, 1.5, "logs/run"
    saved.loader_gen.manual_seed(99)
    save_resume_state(tmp_path / "r.pt", saved)
    restored = load_resume_state(tmp_path / "r.pt", _state(1))
    assert (restored.epoch, restored.step, restored.best, restored.run_dir) == (3, 42, 1.5, "logs/run")
    assert torch.equal(restored.loader_gen.get_state(), saved.loader_gen.get_state())
    assert torch.equal(restored.synth_gen.get_state(), saved.synth_gen.get_state())
    for k, v in saved.model.state_dict().items():
        assert torch.equal(restored.model.state_dict()[k], v), k
    torch.save({"model": {}}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="missing optimizer"):
        load_resume_state(tmp_path / "bad.pt", _state(1))


class FakeClock:
    """Seconds that advance by `tick` at every reading: the run's time is its number of clock readings."""

    def __init__(self, tick):
        self.t, self.tick = 0.0, tick

    def __call__(self):
        self.t += self.tick
        return self.t


def test_max_minutes_fixes_the_steps_so_the_run_ends_in_time_with_its_decays(tmp_path):
    data = tmp_path / "widget" / "train" / "good"
    write_images(data, 12)
    cfg = Config.build("cpu", "ours", data_path=str(data), size=32, rec_base_width=4, seg_base_width=2, bs=2,
                       amp="off", epochs=100, max_minutes=0.01, prior="none", lr=1.0,
                       checkpoint_path=str(tmp_path / "ck"), log_path=str(tmp_path / "logs"))
    clock = FakeClock(0.01)  # a budget of 60 readings: about 40 steps
    run, state = setup_run(cfg, "widget", data, torch.device("cpu"), ["train.py"], clock=clock)
    run_epochs(run, state)
    assert state.step == run.budget.total_steps < run.budget.max_steps  # the budget ended it, not the epochs
    assert 0.45 < clock.t <= 0.6 + 0.02  # it used most of its budget and no more (a reading past the check)
    assert state.optimizer.param_groups[0]["lr"] == pytest.approx(0.04)  # both decays done


def _budget_run(tmp_path, clock, **overrides):
    """A tiny run of 12 images (5 steps an epoch: 10 trained, bs 2) with a 0.6 s budget on `clock`."""
    data = tmp_path / "widget" / "train" / "good"
    write_images(data, 12)
    cfg = Config.build("cpu", "ours", data_path=str(data), size=32, rec_base_width=4, seg_base_width=2, bs=2,
                       amp="off", max_minutes=0.01, prior="none", lr=1.0, checkpoint_path=str(tmp_path / "ck"),
                       log_path=str(tmp_path / "logs"), **overrides)
    return setup_run(cfg, "widget", data, torch.device("cpu"), ["train.py"], clock=clock)


def test_max_minutes_without_epochs_fills_the_budget_past_the_presets_epochs(tmp_path):
    clock = FakeClock(0.01)  # a budget of 60 readings: about 40 steps, the preset's 2 epochs are 10
    run, state = _budget_run(tmp_path, clock, epochs=2, fill_budget=True)
    assert epoch_label(run, 1) == "epoch 1"  # no plan yet: no made-up total
    run_epochs(run, state)
    assert state.step == run.budget.total_steps > 2 * len(run.loader)  # past the named epochs, ended by its plan
    assert 0.45 < clock.t <= 0.6 + 0.02  # most of its budget and no more (a reading past the check)
    assert state.optimizer.param_groups[0]["lr"] == pytest.approx(0.04)  # both decays done
    planned = planned_epochs(run.budget.total_steps, len(run.loader))
    assert state.epoch + 1 == planned and epoch_label(run, planned) == f"epoch {planned}/{planned}"
    assert run.base == "DRAEM_test_1.0_2_bs2_widget_"  # named after the preset's epochs, as before


def test_an_explicit_epochs_still_caps_a_budgeted_run(tmp_path):
    clock = FakeClock(0.001)  # a budget of 600 readings: the 2 epochs end first
    run, state = _budget_run(tmp_path, clock, epochs=2)
    run_epochs(run, state)
    assert state.step == run.budget.max_steps == 2 * len(run.loader) and state.epoch == 2
    assert epoch_label(run, 2) == "epoch 2/2"


class SpeedingClock(FakeClock):
    """A FakeClock whose tick drops from `slow` to `fast` after `after` readings: a shared machine freed."""

    def __init__(self, slow, fast, after):
        super().__init__(slow)
        self.fast, self.left = fast, after

    def __call__(self):
        self.left -= 1
        if self.left < 0:
            self.tick = self.fast
        return super().__call__()


def test_a_run_that_speeds_up_still_uses_its_budget(tmp_path):
    clock = SpeedingClock(0.004, 0.001, after=60)  # 4x faster after 60 readings of a 0.6 s budget
    run, state = _budget_run(tmp_path, clock, epochs=2, fill_budget=True)
    run_epochs(run, state)
    assert 0.95 * 0.6 < clock.t <= 0.6 + 0.002  # the mean pace since the start planned 0.915 of it
    assert state.optimizer.param_groups[0]["lr"] == pytest.approx(0.04)
