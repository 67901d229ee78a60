"""A generated data set folder, made once: written under a temporary sibling, its marker last, renamed into place.

    class_dir = make_once(root, "coil", {"version": 2, "seed": 0}, write)   # write(folder) fills the folder

A complete copy made with the same parameters is reused; an interrupted or differently parameterised one is
replaced. A crash leaves the old folder or the new one, never half of one (plus a hidden temp folder at worst).
"""
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

MARKER = ".complete"  # written last: its presence (with matching parameters) means the folder is complete


def is_complete(folder, params):
    """True when `folder` holds a marker recording exactly `params` (a JSON-able dict)."""
    try:
        return json.loads((Path(folder) / MARKER).read_text()) == params
    except (OSError, ValueError):
        return False


def make_once(root, name, params, write):
    """`root/name`, filled by `write(folder)` unless a complete copy made with the same `params` is there."""
    root = Path(root)
    target = root / name
    params = json.loads(json.dumps(params))  # as the marker reads back: tuples become lists
    if is_complete(target, params):
        return target
    log.info("generating %s", target)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-tmp-", dir=root))
    tmp.chmod(0o755)  # mkdtemp makes it private; the data set is an ordinary folder
    try:
        write(tmp)
        (tmp / MARKER).write_text(json.dumps(params))
        if target.exists() or target.is_symlink():  # stale or incomplete: a folder cannot be renamed over it
            old = Path(tempfile.mkdtemp(prefix=f".{name}-old-", dir=root))
            os.replace(target, old / name)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, target)
    except OSError:
        if is_complete(target, params):  # another process finished the same data set first
            return target
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
