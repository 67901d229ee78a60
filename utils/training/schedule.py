"""How long a run is: Adam with the paper's two decays, and --max_minutes turned into a number of steps.

    optimizer, scheduler = make_optimizer(model, 1e-4, step_cap(settings, len(loader)))   # x0.2 at 80%, 90%
    replan(run, state)   # a --max_minutes run: total_steps from the measured time per step and per checkpoint
"""
import logging
import math
import time
from collections import Counter
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


DECAYS_AT = (0.8, 0.9)  # the paper's two x0.2 decays of the learning rate, as shares of the run
DECAY = 0.2


def decay_steps(total_steps):
    """The steps at which the learning rate decays, for a run of `total_steps`."""
    return [int(total_steps * share) for share in DECAYS_AT]


def make_optimizer(model, lr, total_steps):
    """Adam at lr, x0.2 at 80% and 90% of training (the paper's epochs, counted in steps so short runs decay)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    return optimizer, torch.optim.lr_scheduler.MultiStepLR(optimizer, decay_steps(total_steps), gamma=DECAY)



PLAN_AFTER_STEPS = 20  # the first plan of a --max_minutes run, from the time of its first steps
CHECKPOINT_MARGIN = 1.3  # the last checkpoint may take this much longer than the one timed: the demo's 2 minutes
# ended at 125-128 s when its final validation took 25 s against 19 s timed on a shared machine
CHECKPOINT_SHARE = 0.1  # a --max_minutes run validates every k epochs, k such that checkpoints take at most this
UNBOUNDED = 2 ** 62  # the step cap of a run that fills its --max_minutes: its plan ends it


def step_cap(settings, steps_per_epoch):
    """The most steps a run may take: --epochs of them, or UNBOUNDED when the budget alone ends it
    (settings.fill_budget: --max_minutes without --epochs; the pair is still named after settings.epochs)."""
    if settings.fill_budget and settings.max_minutes:
        return UNBOUNDED
    return settings.epochs * steps_per_epoch


def planned_epochs(total_steps, steps_per_epoch):
    """The epochs `total_steps` take (the last one partial), or None while a budget-filling run has no plan yet."""
    return None if total_steps >= UNBOUNDED else math.ceil(total_steps / steps_per_epoch)


@dataclass
class Budget:
    """--max_minutes as a number of steps. `clock` (seconds) is time.monotonic, or a fake one in tests; `start`
    is the run's start (the bank fit and every validation count); the plan is revised after PLAN_AFTER_STEPS
    steps and after each checkpoint until the first decay, from the recent time per step (`recent_step_s`) and
    the last checkpoint's."""
    seconds: float | None  # None: no budget
    clock: object = time.monotonic
    start: float = 0.0
    max_steps: int = 0  # the step cap: --epochs of steps (step_cap: UNBOUNDED when the minutes alone end the run)
    total_steps: int = 0  # where the run ends: max_steps, or the steps --max_minutes allows (replan)
    train_start: float | None = None  # clock when the first step of this process began
    first_step: int = 0
    checkpoint_s: float = 0.0  # the last checkpoint's duration
    checkpoints_s: float = 0.0  # all checkpoints' durations since train_start
    every_epochs: int = 1  # a checkpoint at the end of every k-th epoch (`checkpoint_epochs`)
    marks: list = field(default_factory=list)  # (clock, step, checkpoints_s) at each plan, oldest first


def recent_step_s(b, now, step):
    """Seconds a step takes lately, checkpoints excluded: since the latest plan at least PLAN_AFTER_STEPS steps
    back (else since the first step). On a shared machine the pace changes; the run's mean pace lags behind and
    a run that sped up ended with a tenth of its minutes unused (MTD, 534 s of 600)."""
    t0, s0, c0 = b.train_start, b.first_step, 0.0
    for t, s, c in b.marks:
        if step - s >= PLAN_AFTER_STEPS:
            t0, s0, c0 = t, s, c
    return (now - t0 - (b.checkpoints_s - c0)) / (step - s0)


def steps_that_fit(seconds_left, step_s, checkpoint_s, steps_per_checkpoint):
    """How many more steps end within `seconds_left`: each step costs step_s plus its share of a checkpoint,
    and the last checkpoint is paid in full."""
    per_step = step_s + checkpoint_s / max(1, steps_per_checkpoint)
    return max(0, int((seconds_left - checkpoint_s) / max(per_step, 1e-9)))


def checkpoint_epochs(step_s, checkpoint_s, steps_per_epoch, share=CHECKPOINT_SHARE):
    """Every how many epochs a --max_minutes run checkpoints, so that checkpoints take at most about `share` of
    its time: at a tiled scale, validating large held-out images can cost more than a short epoch."""
    return max(1, math.ceil(checkpoint_s / max(share * step_s * steps_per_epoch, 1e-9)))


def set_milestones(scheduler, total, step):
    """The x0.2 decays at 80% and 90% of `total` steps, each after `step` (MultiStepLR counts its steps)."""
    d1, d2 = decay_steps(total)
    m1 = max(d1, step + 1)
    m2 = max(d2, m1 + 1)
    scheduler.milestones = Counter([m1, m2])
    return max(total, m2 + 1)


def replan(run, state):
    """Fix run.budget.total_steps so the run ends within --max_minutes with its decays done; rank 0 decides under DDP."""
    b = run.budget
    if not b.seconds or b.train_start is None or state.step <= b.first_step:
        return
    if state.step >= min(state.scheduler.milestones):  # the first decay is done: the plan is final
        return
    now = b.clock()
    step_s = recent_step_s(b, now, state.step)
    b.marks.append((now, state.step, b.checkpoints_s))
    if not run.settings.val_every:
        b.every_epochs = checkpoint_epochs(step_s, b.checkpoint_s, len(run.loader))
    every = run.settings.val_every or b.every_epochs * len(run.loader)
    left = steps_that_fit(b.seconds - (now - b.start), step_s, b.checkpoint_s, every)
    total = min(b.max_steps, state.step + left)
    if run.world > 1:
        t = torch.tensor([float(total)], device=run.device)
        dist.broadcast(t, 0)
        total = int(t.item())
    before, b.total_steps = b.total_steps, set_milestones(state.scheduler, total, state.step)
    if b.total_steps != before:
        log.info("--max_minutes %s: %d steps in all (%.2fs a step, %.1fs a checkpoint%s)",
                 run.settings.max_minutes, b.total_steps, step_s, b.checkpoint_s,
                 f", every {b.every_epochs} epochs" if b.every_epochs > 1 else "")


def should_stop(run, state):
    """(the planned steps done or --max_minutes passed, a signal asked to stop); under DDP every rank must agree,
    or the ranks stop at different steps and hang."""
    b = run.budget
    # only when the plan was off (the machine slowed after the plan was final): stop while the rest of the budget
    # still pays the last checkpoint, so the run ends within its minutes (MTD: 607 s of 600 with `> seconds`)
    over = bool(b.seconds) and b.clock() - b.start + CHECKPOINT_MARGIN * b.checkpoint_s > b.seconds
    planned_end = b.total_steps < b.max_steps and state.step >= b.total_steps  # else the epochs end it
    flags = [planned_end or over, run.stop is not None and run.stop.requested]
    if run.world > 1:
        t = torch.tensor([float(f) for f in flags], device=run.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        flags = [bool(v) for v in t.tolist()]
    return flags
