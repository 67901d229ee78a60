"""utils/schedules.py: lr schedules and the weight EMA."""
import pytest
import torch

from utils.schedules import WeightEMA, make_scheduler


def _lrs(schedule, total=100, **kw):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make_scheduler(opt, total, schedule, **kw)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_step_schedule_is_the_papers():
    lrs = _lrs("step")
    assert lrs[79] == 1.0 and lrs[80] == pytest.approx(0.2) and lrs[90] == pytest.approx(0.04)


def test_cosine_warms_up_peaks_and_ends_small():
    lrs = _lrs("cosine", warmup=0.1)
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] < 0.02


def test_unknown_schedule_is_an_error():
    with pytest.raises(ValueError, match="unknown schedule"):
        _lrs("linear")


def test_ema_follows_the_weights_and_copies_buffers():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    ema = WeightEMA(net, decay=0.5)
    w0 = net[0].weight.detach().clone()
    with torch.no_grad():
        net[0].weight.add_(1.0)
    net(torch.randn(4, 2))  # updates BN statistics
    ema.update(net)
    d = min(0.5, 2 / 11)  # the warm-up decay of the first update
    assert torch.allclose(ema.model[0].weight, w0 + (1 - d))
    assert torch.equal(ema.model[1].running_mean, net[1].running_mean)
    restored = WeightEMA(net, decay=0.5)
    restored.load_state_dict(ema.state_dict())
    assert restored.updates == 1 and torch.equal(restored.model[0].weight, ema.model[0].weight)
