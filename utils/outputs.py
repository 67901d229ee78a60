"""Output paths checked before any work, and the rule that no command overwrites a file it did not write.

Checks create nothing: a folder that does not exist yet is checked through its nearest existing parent (a
folder, writable: probed with a temp file of our own pattern that is removed at once).
Files we write carry a mark so that a later run may replace them: PNG pictures a `tEXt` chunk
(`Software` = `DRAEM`), CSV files their header line, JSON files their keys.
"""
import json
import os
import struct
import zlib
from pathlib import Path

from utils.atomic import new_temp_file
from utils.runtime import UsageError

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


def check_output_file(path, flag, is_ours):
    """UsageError unless `path` can be written: not a folder, in a writable folder, and, when it exists, written
    by us before (`is_ours(path)`); the file itself is never touched here."""
    path = Path(path)
    if os.path.isdir(path):
        raise UsageError(f"{flag} {path} is an existing folder; give a file name")
    name_max = os.pathconf(_nearest_existing(path.parent)[0], "PC_NAME_MAX") if hasattr(os, "pathconf") else 255
    if len(os.fsencode(path.name)) > name_max:
        raise UsageError(f"{flag} {path}: the file name is longer than {name_max} bytes")
    check_output_dir(path.parent, flag, shown=path)
    refuse_foreign(path, flag, is_ours)


def refuse_foreign(path, flag, is_ours):
    """UsageError when a file we would replace at `path` was not written by us (or is a folder)."""
    if os.path.isdir(path) or (os.path.exists(path) and not is_ours(path)):
        raise UsageError(f"{flag}: {path} exists and was not written by this tool; refusing to overwrite it "
                         f"(remove it or choose another name)")


def refuse_input_overwrite(outputs, inputs, out_flag="--output_path", in_flag="--image_path"):
    """UsageError naming both when an output path is one of the input files."""
    inputs = {os.path.realpath(p): p for p in inputs}
    for out in outputs:
        hit = inputs.get(os.path.realpath(out))
        if hit is not None:
            raise UsageError(f"{out_flag} {out} would replace the input image {in_flag} {hit}; "
                             f"choose another output")


def mark_png(png: bytes) -> bytes:
    """The PNG with a tEXt chunk `Software: DRAEM` after IHDR, so a later run knows it may replace it."""
    if not png.startswith(PNG_SIGNATURE):
        raise ValueError("not a PNG")
    ihdr_end = 8 + 4 + 4 + 13 + 4  # signature, length, type, 13 data bytes, CRC
    chunk = struct.pack(">I", len(PNG_MARK)) + b"tEXt" + PNG_MARK
    chunk += struct.pack(">I", zlib.crc32(chunk[4:]) & 0xFFFFFFFF)
    return png[:ihdr_end] + chunk + png[ihdr_end:]


def png_is_ours(path):
    try:
        with open(path, "rb") as f:
            head = f.read(128)
    except OSError:
        return False
    return head.startswith(PNG_SIGNATURE) and PNG_MARK in head


def text_starts_with(*headers):
    """is_ours test for a text file whose first line is one of the `headers` we write."""
    def is_ours(path):
        try:
            with open(path, encoding="utf-8", newline="") as f:
                return f.readline(4096).rstrip("\r\n") in headers
        except (OSError, UnicodeDecodeError):
            return False
    return is_ours


def json_with_keys(keys):
    def is_ours(path):
        try:
            obj = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return isinstance(obj, dict) and set(keys) <= set(obj)
    return is_ours
