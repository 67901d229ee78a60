"""The writers' side: recovery after a kill, the one-writer-per-pair-name lock, the resumable state, and the
output rules. How files are written (atomically, singly or as a group) is utils/checkpoint.py.

- `recover(folder)` (writers only: train.py, recalibration) finishes committed group writes a crash left
  unfinished and deletes temp files of ours that no live writer holds; `tidy_output_folders` does the latter in
  output folders before detect.py or evaluate.py write there.
- `hold_checkpoint_names` holds a lock file per pair name, so two runs never write one pair.
- `{base}_resume.pt` (RESUME_KEYS): the state dicts of the model, optimizer and scheduler, both random generators'
  states, and the progress: epoch to restart at, step, best validation score, run folder.
- Outputs are checked before any work and never replace an input file or land inside an input folder.
"""
import contextlib
import errno
import hashlib
import logging
import os
import time
from pathlib import Path

import torch

from utils.checkpoint import (JOURNAL_RE, TEMP_RE, atomic_open, lock_fd, mtime, new_temp_file, pending_moves,
                              roll_forward, safe_load, same_file)
from utils.cli import UsageError

try:
    import fcntl
except ImportError:  # Windows: no flock; temp files of live writers are told apart by age, one writer unchecked
    fcntl = None

log = logging.getLogger(__name__)

UNLOCKED_TEMP_AGE_S = 3600.0  # without flock (Windows), a temp file this old is taken for a dead writer's


def _remove_if_abandoned(path):
    """Remove a temp file of ours unless a live writer holds its flock; True when removed.

    It is removed while we hold its lock: a writer that created it a moment ago and waits for the lock then
    finds its name gone and takes another (new_temp_file)."""
    try:
        if fcntl is None:
            if time.time() - path.stat().st_mtime < UNLOCKED_TEMP_AGE_S:
                return False
            path.unlink()
            return True
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        lock_fd(fd, blocking=False)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False  # being written
        raise
    try:
        path.unlink(missing_ok=True)
    finally:
        os.close(fd)
    return True


def recover(folder):
    """Finish committed group writes and delete temp files that dead writers of ours left in `folder`.

    Returns (targets completed, temp files removed). Only our own names are touched. Raises OSError when the
    folder cannot be changed (read-only); readers may ignore that.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return [], []
    completed = []
    journals = [p for p in folder.iterdir() if JOURNAL_RE.match(p.name)]
    for journal in sorted(journals, key=mtime):  # oldest commit first
        try:
            completed += roll_forward(journal)
        except FileNotFoundError:
            pass  # its writer finished it meanwhile
        except (ValueError, AttributeError):  # not one of ours: journals are written atomically
            log.warning("ignoring %s: not one of our commit journals (left as it is)", journal)
    removed = _remove_abandoned(folder)
    if completed or removed:
        log.info("%s: completed %d interrupted write(s), removed %d leftover temp file(s)", folder,
                 len(completed), len(removed))
    return completed, removed


def _remove_abandoned(folder, keep=()):
    """Remove the temp files of ours in `folder` that no live writer holds, except those in `keep`."""
    return [p for p in sorted(folder.iterdir())
            if TEMP_RE.match(p.name) and p not in keep and p.is_file() and _remove_if_abandoned(p)]


def tidy_output_folders(folders):
    """Before writing outputs into `folders`: remove the temp files killed writers of ours left there (folders
    that do not exist yet are skipped). Committed group writes are left alone (a checkpoint folder's are only
    finished by its writers), and so are their temp files."""
    for folder in map(Path, folders):
        if folder.is_dir():
            removed = _remove_abandoned(folder, keep=set(pending_moves(folder).values()))
            if removed:
                log.info("%s: removed %d leftover temp file(s)", folder, len(removed))


def _nearest_existing(path):
    p = Path(os.path.abspath(path))
    missing = []
    while not os.path.exists(p) and p != p.parent:  # os.path: False (not an error) for an over-long name
        missing.append(p.name)
        p = p.parent
    return p, missing[::-1]


def _probe_writable(folder, flag, path):
    try:
        fd, tmp = new_temp_file(folder)
    except OSError as e:
        raise UsageError(f"{flag} {path}: cannot write in {folder} ({e.strerror})") from None
    os.close(fd)
    tmp.unlink(missing_ok=True)


def check_output_dir(path, flag, shown=None):
    """UsageError unless `path` is (or can be created as) a writable folder. Creates nothing.

    shown: the path the message names (the flag's value), when `path` is its folder."""
    shown = path if shown is None else shown
    existing, missing = _nearest_existing(path)
    if not existing.is_dir():
        what = "is a file" if existing == Path(os.path.abspath(path)) else f"cannot be created: {existing} is a file"
        raise UsageError(f"{flag} {shown} {what}" + (", not a folder" if shown == path else ""))
    name_max = os.pathconf(existing, "PC_NAME_MAX") if hasattr(os, "pathconf") else 255
    for name in missing:
        if len(os.fsencode(name)) > name_max:
            raise UsageError(f"{flag} {shown}: the name {name[:40]}... is longer than {name_max} bytes")
    _probe_writable(existing, flag, shown)


def check_output_file(path, flag):
    """UsageError unless `path` can be written: not a folder, a name the file system takes, in a writable
    folder. An existing file is replaced, as by any command-line tool; the file itself is never touched here."""
    path = Path(path)
    if os.path.isdir(path):
        raise UsageError(f"{flag} {path} is an existing folder; give a file name")
    name_max = os.pathconf(_nearest_existing(path.parent)[0], "PC_NAME_MAX") if hasattr(os, "pathconf") else 255
    if len(os.fsencode(path.name)) > name_max:
        raise UsageError(f"{flag} {path}: the file name is longer than {name_max} bytes")
    check_output_dir(path.parent, flag, shown=path)


def _identity(path):
    """(device, inode) of the file `path` names, links followed; None when there is none."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):  # missing, a dangling link, an embedded NUL
        return None
    return st.st_dev, st.st_ino


def refuse_input_overwrite(outputs, inputs, out_flag="--output_path"):
    """UsageError naming both paths when an output is, or resolves to (a symlink, `..`, a hard link: the same
    inode), a file the command reads. inputs: {input flag: the files read under it}, e.g. the images and the
    checkpoint pair being loaded. Writes are atomic (a link is replaced, not written through), but a command
    never even seems to replace its input."""
    by_path, by_inode = {}, {}
    for flag, paths in inputs.items():
        for p in paths:
            by_path.setdefault(os.path.realpath(p), (flag, p))
            if (key := _identity(p)) is not None:
                by_inode.setdefault(key, (flag, p))
    for out in outputs:
        hit = by_path.get(os.path.realpath(out)) or by_inode.get(_identity(out))
        if hit is not None:
            raise UsageError(f"{out_flag} {out} would replace the input {hit[0]} {hit[1]}; choose another output")


def refuse_inside(output, folder, out_flag="--output_path", in_flag="--image_path"):
    """UsageError when the output folder is the input folder or inside it (its files would join the inputs)."""
    out, src = Path(output).resolve(), Path(folder).resolve()
    if out == src or src in out.parents:
        raise UsageError(f"{out_flag} {output} is inside the input folder {in_flag} {folder}: its files would "
                         f"replace or join the inputs; choose a folder outside it")


RESUME_KEYS = ("model", "optimizer", "scheduler", "loader_gen", "synth_gen", "epoch", "step", "best", "run_dir")


def resume_path(checkpoint_path, base):
    return Path(checkpoint_path) / f"{base}_resume.pt"


def atomic_save(obj, path):
    """torch.save via a temp file + os.replace: never a half-written checkpoint."""
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)


def save_resume_state(path, state):
    """Write the resumable state of a run. `state`: a utils.engine.TrainState (model unwrapped from DDP)."""
    atomic_save({"model": state.model.state_dict(), "optimizer": state.optimizer.state_dict(),
                 "scheduler": state.scheduler.state_dict(), "loader_gen": state.loader_gen.get_state(),
                 "synth_gen": state.synth_gen.get_state().cpu(), "epoch": state.epoch, "step": state.step,
                 "best": state.best, "run_dir": state.run_dir}, path)


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


def run_name(base):
    """The name a training run holds for the pair `base`: a run named N writes the pairs N and N + "last"."""
    return base[: -len("last")] if base.endswith("last") else base


def lock_path(folder, name):
    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return Path(folder) / f".draem-lock-{digest}"


def _holder(path):
    with contextlib.suppress(OSError, ValueError):
        pid, _, name = path.read_text().partition(" ")
        return int(pid), name.strip()
    return None, ""


class NameLock:
    """`with NameLock(folder, name, "train.py"): ...` holds `name` in `folder` or raises UsageError at once."""

    def __init__(self, folder, name):
        self.path, self.name, self.fd = lock_path(folder, name), name, None

    def acquire(self):
        if fcntl is None:
            return self
        while True:  # the file may be unlinked by its releasing holder between our open and our flock
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise UsageError(f"--checkpoint_path {self.path.parent}: cannot write in it ({e.strerror})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                pid, _ = _holder(self.path)
                who = f"process {pid}" if pid else "another process"
                raise UsageError(f"{self.name} in {self.path.parent} is being written by {who} (another "
                                 f"train.py or evaluate.py --recalibrate); wait for it to end or use another --checkpoint_path") from None
            if same_file(self.path, fd):
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {self.name}\n".encode("utf-8", "surrogateescape"))
        self.fd = fd
        return self

    def release(self):
        if self.fd is not None:
            self.path.unlink(missing_ok=True)  # unlinked while locked: a waiting opener retries (same_file)
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def lock_names(folder, names):
    """An ExitStack holding every name in `names` (all or none: a refused name releases those taken)."""
    stack = contextlib.ExitStack()
    with contextlib.ExitStack() as taking:
        for name in names:
            taking.enter_context(NameLock(folder, name))
        stack.push(taking.pop_all())
    return stack


def hold_checkpoint_names(checkpoint_path, names, log_path=None):
    """A run's start: create the checkpoint folder, hold every checkpoint name in it (UsageError naming the
    running process when another run holds one), then finish or remove what killed runs of these names left
    (there and in their run folders under `log_path`). Returns the ExitStack holding the locks."""
    folder = Path(checkpoint_path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--checkpoint_path {folder}: cannot create it ({e.strerror})") from None
    stack = lock_names(folder, names)
    recover(folder)
    if log_path is not None and Path(log_path).is_dir():
        for run_dir in Path(log_path).iterdir():
            if run_dir.is_dir() and any(run_dir.name == n or run_dir.name.startswith(n + "_") for n in names):
                recover(run_dir)
    return stack
