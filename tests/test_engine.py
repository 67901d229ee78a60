"""utils/engine.py pieces on their own (the whole run is tested through train.main in test_train.py)."""
import pytest
import torch

from model import DRAEM
from utils.checkpoint import load_resume_state, save_resume_state
from utils.engine import Diverged, TrainState, calibrate_threshold, loss_values, make_optimizer


def _state(seed):
    torch.manual_seed(seed)
    model = DRAEM(4, 2).init_weights()
    optimizer, scheduler = make_optimizer(model, 0.001, total_steps=10)
    return TrainState(model, optimizer, scheduler, torch.Generator().manual_seed(seed),
                      torch.Generator().manual_seed(seed + 1))


def test_schedule_decays_at_80_and_90_percent_of_the_steps():
    optimizer, scheduler = make_optimizer(torch.nn.Linear(1, 1), 1.0, total_steps=10)
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[:8] == [1.0] * 8 and lrs[8] == pytest.approx(0.2) and lrs[9] == pytest.approx(0.04)


def test_calibration_uses_normal_scores_only():
    """utils/calibration.py does the statistics (tests/test_calibration.py); here: the engine's call of it."""
    calib = calibrate_threshold(torch.linspace(0.1, 0.2, 101), 0.05)
    assert calib["n_normal"] == 101 and calib["target_false_reject"] == 0.05
    assert calib["normal_median"] == pytest.approx(0.15) and 0.19 < calib["threshold"] <= 0.2
    assert 0 < calibrate_threshold([0.9, 0.95, 1.0], 0.02)["threshold"] <= 1.0  # scores are probabilities


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
