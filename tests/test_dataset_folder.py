import json

import pytest

from utils.synthesis import dataset_folder
from utils.synthesis.dataset_folder import MARKER, is_complete, make_once


def _writer(calls, text="a"):
    def write(folder):
        calls.append(folder)
        (folder / "x.txt").write_text(text)
    return write


def test_made_once_then_reused(tmp_path):
    calls = []
    out = make_once(tmp_path, "cls", {"v": 1, "shape": (2, 3)}, _writer(calls))
    assert out == tmp_path / "cls" and (out / "x.txt").read_text() == "a"
    assert json.loads((out / MARKER).read_text()) == {"v": 1, "shape": [2, 3]}
    assert make_once(tmp_path, "cls", {"v": 1, "shape": (2, 3)}, _writer(calls)) == out
    assert len(calls) == 1 and [p.name for p in tmp_path.iterdir()] == ["cls"]  # no temp folders left


def test_other_params_or_no_marker_rebuild(tmp_path):
    calls = []
    out = make_once(tmp_path, "cls", {"v": 1}, _writer(calls))
    make_once(tmp_path, "cls", {"v": 2}, _writer(calls, "b"))
    assert (out / "x.txt").read_text() == "b" and is_complete(out, {"v": 2}) and not is_complete(out, {"v": 1})
    (out / MARKER).unlink()  # as if interrupted
    make_once(tmp_path, "cls", {"v": 2}, _writer(calls, "c"))
    assert (out / "x.txt").read_text() == "c" and len(calls) == 3


def test_a_failed_write_leaves_the_old_folder(tmp_path):
    out = make_once(tmp_path, "cls", {"v": 1}, _writer([]))

    def broken(folder):
        (folder / "half.txt").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        make_once(tmp_path, "cls", {"v": 2}, broken)
    assert is_complete(out, {"v": 1}) and not (out / "half.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["cls"]


def test_losing_a_race_to_an_identical_build_is_fine(tmp_path, monkeypatch):
    # Another process renames its complete copy into place just before ours: our rename fails, theirs stands.
    real_replace = dataset_folder.os.replace

    def replace(src, dst):
        if dst == tmp_path / "cls":
            make_once(tmp_path / "other", "cls", {"v": 1}, _writer([], "theirs"))
            real_replace(tmp_path / "other" / "cls", dst)
            raise OSError("Directory not empty")
        real_replace(src, dst)

    monkeypatch.setattr(dataset_folder.os, "replace", replace)
    out = make_once(tmp_path, "cls", {"v": 1}, _writer([], "ours"))
    assert (out / "x.txt").read_text() == "theirs" and is_complete(out, {"v": 1})
