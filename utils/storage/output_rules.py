"""Where outputs may go, checked before any work: the folder is writable (probed), an output never replaces an
input file and never lands inside an input folder."""
import os
from pathlib import Path

from utils.runtime import UsageError
from utils.storage.atomic import new_temp_file


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
