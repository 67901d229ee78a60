"""One writer per checkpoint pair name: a lock file per name (flock, or age without it), held by a training run
for its pair and its `_last` pair, and by a recalibration for the pair it rewrites."""
import contextlib
import hashlib
import os
from pathlib import Path

from utils.runtime import UsageError
from utils.storage.atomic import recover, same_file

try:
    import fcntl
except ImportError:  # Windows: no flock; temp files of live writers are told apart by age, one writer unchecked
    fcntl = None


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
    """`with NameLock(folder, name): ...` holds `name` in `folder` or raises UsageError at once."""

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
                raise UsageError(f"{self.name} in {self.path.parent} is being written by {who} (another train.py or "
                                 f"evaluate.py --recalibrate); wait for it to end or use another --checkpoint_path") \
                    from None
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
