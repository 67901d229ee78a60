"""How every file is written: atomically, singly or as a group, and what a crash leaves behind.

One file (`atomic_open`, the one primitive; `atomic_write_bytes` for bytes) is written under a temp name in its
folder (`.draem-<12 hex>.tmp`), fsynced and `os.replace`d over the target: a crash leaves the old file or the new
one. A group (`atomic_group`, the checkpoint pair): each file under its own temp name; then a journal
(`.draem-commit-<16 hex>.json`, the temp -> target moves), written atomically, is the commit point; then the moves.
After a crash, readers see the committed group through `pending_moves`, changing nothing; writers finish it
(`recover`). Writers flock their temp files: cleaners (`recover`, `tidy_output_folders`) remove only dead writers'.
"""
import contextlib
import errno
import json
import logging
import os
import re
import secrets
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock; temp files of live writers are then told apart by age only
    fcntl = None

log = logging.getLogger(__name__)


TEMP_RE = re.compile(r"^\.draem-[0-9a-f]{12}\.tmp$")


JOURNAL_RE = re.compile(r"^\.draem-commit-[0-9a-f]{16}\.json$")


class WriteError(OSError):
    """An OS error while writing an output file (disk full, file-size limit, permissions, long name); `str()` is
    one line naming the target file (not the temp file it was written through)."""

    def __init__(self, path, err):
        super().__init__(err.errno, err.strerror or str(err), str(path))
        self.path = Path(path)

    def __str__(self):
        return f"cannot write {self.path}: {self.strerror}"


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def lock_fd(fd, blocking=True):
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))


def _fsync_dir(folder):
    with contextlib.suppress(OSError):  # not every filesystem lets a folder be opened and synced
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def new_temp_file(folder):
    """(fd, path) of a new locked temp file in `folder` with ordinary permissions."""
    while True:
        tmp = Path(folder) / f".draem-{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 & ~_umask())
        except FileExistsError:
            continue
        lock_fd(fd)
        if same_file(tmp, fd):
            return fd, tmp
        os.close(fd)  # a cleaner removed it between our create and our lock: take another name


def same_file(path, fd):
    """True while `path` is still the file open as `fd` (a cleaner or a releasing holder may unlink it)."""
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _os_error_of(exc):
    """The OSError behind `exc` (torch.save wraps a failed write in a RuntimeError), or None."""
    while exc is not None and not isinstance(exc, OSError):
        exc = exc.__cause__ if exc.__cause__ is not None else (None if exc.__suppress_context__ else exc.__context__)
    return exc


class _Temp:
    """A temp file being written: removed on failure unless a committed journal names it (`keep`)."""

    def __init__(self, path):
        self.path, self.keep = path, False


@contextlib.contextmanager
def _temp_file(path, mode, **kwargs):
    """Yields (file object, _Temp) for `path`; the file is flushed and fsynced, still open and locked."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = new_temp_file(path.parent)
    except OSError as e:
        raise WriteError(path, e) from None
    temp = _Temp(tmp)
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f, temp
    except BaseException as e:
        if not temp.keep:
            tmp.unlink(missing_ok=True)
        os_error = _os_error_of(e)
        if os_error is not None and not isinstance(os_error, WriteError):
            raise WriteError(path, os_error) from None
        raise


def _sync(f):
    f.flush()
    os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_open(path, mode="wb", **kwargs):
    """`with atomic_open(p, "w") as f: ...` writes p only if the block completes; parents are created. OS errors
    (ENOSPC, EFBIG, EACCES, ENAMETOOLONG ...) are raised as WriteError naming `p`."""
    with _temp_file(path, mode, **kwargs) as (f, temp):
        yield f
        _sync(f)
        os.replace(temp.path, path)  # while still locked: a cleaner never sees it unlocked before the move
    _fsync_dir(Path(path).parent)


def atomic_write_bytes(path, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_group(targets, write_one):
    """Write several files in one folder as a unit: all old or all new after a crash at any moment.

    targets: paths in one folder; write_one(binary file, index) writes the content of targets[index].
    """
    targets = [Path(t) for t in targets]
    folder = targets[0].parent
    if any(t.parent != folder for t in targets):
        raise ValueError("atomic_group: all targets must be in one folder")
    with contextlib.ExitStack() as stack:
        temps = []
        for i, target in enumerate(targets):
            f, temp = stack.enter_context(_temp_file(target, "wb"))
            write_one(f, i)
            _sync(f)
            temps.append(temp)
        journal = folder / f".draem-commit-{secrets.token_hex(8)}.json"  # unique: a reader removes only the one it read
        moves = [[temp.path.name, t.name] for temp, t in zip(temps, targets)]
        atomic_write_bytes(journal, json.dumps({"moves": moves}).encode())  # the commit point
        for temp in temps:
            temp.keep = True  # committed: from now on the group is completed, never undone
        _apply(journal, moves)
    return targets


def _is_bare_target(name):
    """A plain file name in the folder itself: no separator, not `.`/`..`, not one of our hidden names."""
    return (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name
            and not name.startswith(".draem-"))


def journal_moves(journal):
    """[[temp name, target name], ...] of one of our journals; ValueError when it is not one (a move that names
    anything but our temp file and a plain name in the same folder: never followed)."""
    moves = json.loads(journal.read_text()).get("moves")
    ok = isinstance(moves, list) and all(
        isinstance(m, list) and len(m) == 2 and isinstance(m[0], str) and TEMP_RE.match(m[0])
        and _is_bare_target(m[1]) for m in moves)
    if not ok or len({m[1] for m in moves}) != len(moves):
        raise ValueError(f"{journal}: not one of our commit journals")
    return moves


def roll_forward(journal):
    """Apply a committed journal's moves (those not done yet), then remove it. Idempotent."""
    return _apply(journal, journal_moves(journal))


def _apply(journal, moves):
    for tmp_name, target_name in moves:
        with contextlib.suppress(FileNotFoundError):  # already moved (by us or by a concurrent recover)
            os.replace(journal.parent / tmp_name, journal.parent / target_name)
    _fsync_dir(journal.parent)
    journal.unlink(missing_ok=True)
    return [journal.parent / t for _, t in moves]


def mtime(path):
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def pending_moves(folder):
    """{target path: temp path} of committed group writes in `folder` not finished yet (a writer died between the
    commit and the moves). Changes nothing: readers use it to see the committed files."""
    moves = {}
    folder = Path(folder)
    with contextlib.suppress(OSError):
        for journal in sorted((p for p in folder.iterdir() if JOURNAL_RE.match(p.name)), key=mtime):
            with contextlib.suppress(OSError, ValueError, AttributeError):
                for tmp_name, target_name in journal_moves(journal):
                    if (folder / tmp_name).is_file():
                        moves[folder / target_name] = folder / tmp_name
    return moves


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
