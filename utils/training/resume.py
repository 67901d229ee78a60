"""The resumable state `{base}_resume.pt` (RESUME_KEYS): the state dicts of the model, optimizer and scheduler,
both random generators' states, and the progress (epoch to restart at, step, best validation score, run folder).
Written atomically after each checkpoint; `--resume` restores it into a freshly built run."""
from pathlib import Path

import torch

from utils.runtime import UsageError
from utils.storage.atomic import atomic_open
from utils.storage.pairs import safe_load

RESUME_KEYS = ("model", "optimizer", "scheduler", "loader_gen", "synth_gen", "epoch", "step", "best", "run_dir")


def resume_path(checkpoint_path, base):
    return Path(checkpoint_path) / f"{base}_resume.pt"


def save_resume_state(path, state):
    """Write the resumable state of a run. `state`: a utils.training.engine.TrainState (model unwrapped from DDP)."""
    saved = {"model": state.model.state_dict(), "optimizer": state.optimizer.state_dict(),
             "scheduler": state.scheduler.state_dict(), "loader_gen": state.loader_gen.get_state(),
             "synth_gen": state.synth_gen.get_state().cpu(), "epoch": state.epoch, "step": state.step,
             "best": state.best, "run_dir": state.run_dir}
    with atomic_open(path) as f:
        torch.save(saved, f)


def load_resume_state(path, state):
    """Restore `state` (freshly built for the same run) in place from save_resume_state's file."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--resume: no resumable state {path}")
    saved = safe_load(path)
    missing = [k for k in RESUME_KEYS if k not in saved] if isinstance(saved, dict) else list(RESUME_KEYS)
    if missing:
        raise UsageError(f"--resume: {path} is not a resumable state (missing {', '.join(missing)})")
    try:
        state.model.load_state_dict(saved["model"])
        state.optimizer.load_state_dict(saved["optimizer"])
    except (RuntimeError, ValueError):  # other --rec_base_width / --seg_base_width than the saved run
        raise UsageError(f"--resume: {path} does not fit this run's networks (saved with other --rec_base_width "
                         f"/ --seg_base_width); use the run's flags or start without --resume") from None
    state.scheduler.load_state_dict(saved["scheduler"])
    state.loader_gen.set_state(saved["loader_gen"])
    state.synth_gen.set_state(saved["synth_gen"].to(state.synth_gen.get_state().device))
    state.epoch, state.step, state.best, state.run_dir = (saved[k] for k in ("epoch", "step", "best", "run_dir"))
    return state
