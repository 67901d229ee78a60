"""Learning-rate schedules and a weight EMA for short runs.

DRAEM's schedule (Adam, lr x0.2 at 80% and 90% of 700 epochs) was made for days on a GPU. For minutes on a CPU:
- "cosine": linear warm-up over the first `warmup` share of the steps, then a cosine from lr down to 1% of it, so
  the last steps always run at a small lr whatever the budget;
- WeightEMA: an exponential moving average of the weights (BatchNorm statistics copied), which averages out the
  step-to-step noise of a short run with a high lr; validation and checkpoints then use the average.
"""
import copy
import math

import torch

SCHEDULES = ("step", "cosine")


def make_scheduler(optimizer, total_steps, schedule="step", warmup=0.05):
    """A per-step LR scheduler: "step" = x0.2 at 80% and 90% (the paper's), "cosine" = warm-up + cosine."""
    if schedule == "step":
        milestones = [int(total_steps * 0.8), int(total_steps * 0.9)]
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.2)
    if schedule != "cosine":
        raise ValueError(f"unknown schedule {schedule!r}; choose from {', '.join(SCHEDULES)}")
    warm = max(1, int(total_steps * warmup))

    def factor(step):
        if step < warm:
            return (step + 1) / warm
        t = min(1.0, (step - warm) / max(1, total_steps - warm))
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class WeightEMA:
    """ema = decay * ema + (1 - decay) * weights after each step; buffers (BN statistics) are copied.

    The effective decay ramps up as min(decay, (1 + t) / (10 + t)) so early averages do not drag in the random
    initialisation (as TensorFlow's ExponentialMovingAverage with num_updates).
    """

    def __init__(self, model, decay):
        self.model = copy.deepcopy(model).eval()
        self.decay, self.updates = decay, 0
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model):
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for e, p in zip(self.model.parameters(), model.parameters()):
            e.lerp_(p.detach(), 1 - d)
        for e, b in zip(self.model.buffers(), model.buffers()):
            e.copy_(b)

    def state_dict(self):
        return {"model": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state):
        self.model.load_state_dict(state["model"])
        self.updates = int(state["updates"])
