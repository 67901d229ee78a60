"""Atomic file writes, singly or as a group (a checkpoint pair), cleanup of what a killed writer left, and the
output rules: outputs are checked before any work and never replace an input file or land inside an input folder.

One file: written under a short temp name in the same folder (`.draem-<12 hex>.tmp`, so the temp name never
makes a valid output name too long), fsynced, then `os.replace`d over the target. A crash leaves the old file
or the new one, never half of one.

A group of files (`atomic_group`): every new file is written under its own temp name and fsynced; then a small
journal (`.draem-commit-<16 hex>.json`: the list of temp -> target moves) is written
atomically: that is the commit point. Then each temp file replaces its target and the journal is removed.
After a crash at any moment:
- before the journal exists: only temp files were written; the targets hold the complete old group;
- after it: `recover(folder)` (run by writers only) replays the journal's moves that have not happened yet, so
  the targets hold the complete new group; readers read the new group through `pending_moves` without moving
  anything.
While a temp file is being written or waits in a group, its writer holds an flock on it; `recover` deletes
only temp files of our own pattern that nobody holds (the writer died) and that are not named by a journal.
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

from utils.cli import UsageError

try:
    import fcntl
except ImportError:  # Windows: no flock; temp files of live writers are then told apart by age only
    fcntl = None

log = logging.getLogger(__name__)

TEMP_RE = re.compile(r"^\.draem-[0-9a-f]{12}\.tmp$")
JOURNAL_RE = re.compile(r"^\.draem-commit-[0-9a-f]{16}\.json$")
UNLOCKED_TEMP_AGE_S = 3600.0  # without flock (Windows), a temp file this old is taken for a dead writer's


class WriteError(OSError):
    """An OS error while writing an output file (disk full, file-size limit, permissions, long name).

    `str()` is one line naming the target file (not the temp file it was written through).
    """

    def __init__(self, path, err):
        super().__init__(err.errno, err.strerror or str(err), str(path))
        self.path = Path(path)

    def __str__(self):
        return f"cannot write {self.path}: {self.strerror}"


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _lock(fd, blocking=True):
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
        _lock(fd)
        if _same_file(tmp, fd):
            return fd, tmp
        os.close(fd)  # a cleaner removed it between our create and our lock: take another name


def _same_file(path, fd):
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
    """`with atomic_open(p, "w") as f: ...` writes p only if the block completes; parents are created.

    OS errors (ENOSPC, EFBIG, EACCES, ENAMETOOLONG ...) are raised as WriteError naming `p`.
    """
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


def _roll_forward(journal):
    """Apply a committed journal's moves (those not done yet), then remove it. Idempotent."""
    return _apply(journal, journal_moves(journal))


def _apply(journal, moves):
    for tmp_name, target_name in moves:
        with contextlib.suppress(FileNotFoundError):  # already moved (by us or by a concurrent recover)
            os.replace(journal.parent / tmp_name, journal.parent / target_name)
    _fsync_dir(journal.parent)
    journal.unlink(missing_ok=True)
    return [journal.parent / t for _, t in moves]


def _mtime(path):
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


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
        _lock(fd, blocking=False)
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


def pending_moves(folder):
    """{target path: temp path} of committed group writes in `folder` not finished yet (a writer died between the
    commit and the moves). Changes nothing: readers use it to see the committed files."""
    moves = {}
    folder = Path(folder)
    with contextlib.suppress(OSError):
        for journal in sorted((p for p in folder.iterdir() if JOURNAL_RE.match(p.name)), key=_mtime):
            with contextlib.suppress(OSError, ValueError, AttributeError):
                for tmp_name, target_name in journal_moves(journal):
                    if (folder / tmp_name).is_file():
                        moves[folder / target_name] = folder / tmp_name
    return moves


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
    for journal in sorted(journals, key=_mtime):  # oldest commit first
        try:
            completed += _roll_forward(journal)
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


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_MARK = b"Software\x00DRAEM"


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


def refuse_input_overwrite(outputs, inputs, out_flag="--output_path", in_flag="--image_path"):
    """UsageError naming both when an output path is one of the input files."""
    inputs = {os.path.realpath(p): p for p in inputs}
    for out in outputs:
        hit = inputs.get(os.path.realpath(out))
        if hit is not None:
            raise UsageError(f"{out_flag} {out} would replace the input {in_flag} {hit}; choose another output")


def refuse_inside(output, folder, out_flag="--output_path", in_flag="--image_path"):
    """UsageError when the output folder is the input folder or inside it (its files would join the inputs)."""
    out, src = Path(output).resolve(), Path(folder).resolve()
    if out == src or src in out.parents:
        raise UsageError(f"{out_flag} {output} is inside the input folder {in_flag} {folder}: its files would "
                         f"replace or join the inputs; choose a folder outside it")
