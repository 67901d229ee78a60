"""Faults a real user meets: crashes between two writes, two runs at once, full disks, odd names and images.

A crash is simulated in a forked child that dies with os._exit (no cleanup runs, as with kill -9) at the k-th
fsync/replace of a write, for every k: the parent then checks what is on disk.
"""
import csv
import dataclasses
import errno
import json
import os
import resource
import signal
import struct
import zlib

import cv2
import numpy as np
import pytest
import torch

import detect
import evaluate
from model import DRAEM
from tests.conftest import write_images
from utils.images.reading import read_image
from utils.runtime import UsageError
from utils.storage import atomic as files
from utils.storage.atomic import TEMP_RE, atomic_write_bytes, recover
from utils.storage.locks import NameLock, lock_names
from utils.storage.pairs import current_paths, load_pair, newest_complete_pair, pair_paths, save_pair

CONFIG = {"size": 32, "rec_base_width": 4, "seg_base_width": 2, "in_channels": 3, "grayscale": False}
CALIB = {"threshold": 0.5, "rule": "test"}
BASE = "DRAEM_test_0.0001_1_bs4_widget_"


def _save(folder, base, step, run="run"):
    torch.manual_seed(step)
    return save_pair(DRAEM(4, 2), folder, base, CONFIG, CALIB, f"{run}-s{step}", run_id=run, step=step)


def _pair_ids(folder, base):
    return [torch.load(p, weights_only=True)["pair_id"] for p in pair_paths(folder, base)]


def _crash_at(k, fn):
    """Run fn in a forked child that dies (os._exit, no cleanup) at the k-th fsync or os.replace; returns True
    when the child got that far (False: fn finished with fewer than k such calls)."""
    pid = os.fork()
    if pid == 0:  # child
        torch.set_num_threads(1)  # the parent's OpenMP thread pool is not in the child: a parallel region would hang
        calls = {"n": 0}

        def dying(real):
            def wrapped(*a, **kw):
                calls["n"] += 1
                if calls["n"] == k:
                    os._exit(9)
                return real(*a, **kw)
            return wrapped
        files.os.replace = dying(os.replace)
        files.os.fsync = dying(os.fsync)
        try:
            fn()
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 9


@pytest.mark.parametrize("with_old_pair", [True, False], ids=["replace", "first-write"])
def test_pair_is_old_or_new_after_a_crash_at_any_moment(tmp_path, with_old_pair):
    """kill -9 between or during the writes of a pair."""
    seen = set()
    for k in range(1, 30):
        folder = tmp_path / f"k{k}"
        if with_old_pair:
            _save(folder, BASE, 17)
        if not _crash_at(k, lambda: _save(folder, BASE, 34)):
            break
        read = None
        if any(p.exists() for p in current_paths(folder, BASE)):
            before = sorted(p.name for p in folder.iterdir())
            read = load_pair(folder, BASE)[1].get("pair_id")  # a reader sees the committed pair, changes nothing
            assert sorted(p.name for p in folder.iterdir()) == before
        recover(folder)  # what the next writer does first
        assert read == (_pair_ids(folder, BASE)[0] if pair_paths(folder, BASE)[0].exists() else None)
        leftovers = [p.name for p in folder.iterdir() if p.name.startswith(".draem-")]
        assert leftovers == [], (k, leftovers)
        if not with_old_pair and not pair_paths(folder, BASE)[0].exists():
            assert not pair_paths(folder, BASE)[1].exists()
            seen.add("none")
            continue
        ids = _pair_ids(folder, BASE)
        assert ids[0] == ids[1], (k, ids)
        load_pair(folder, BASE)
        seen.add(ids[0])
    assert k > 5  # the crash points were really visited
    assert seen == ({"run-s17", "run-s34"} if with_old_pair else {"none", "run-s34"})


def test_a_single_file_is_old_or_new_after_a_crash_at_any_moment(tmp_path):
    """The resume state, pictures, CSV and JSON files: one atomic write each."""
    target = tmp_path / "state.pt"
    contents = set()
    for k in range(1, 10):
        target.write_bytes(b"old" * 1000)
        if not _crash_at(k, lambda: atomic_write_bytes(target, b"new" * 1000)):
            break
        recover(tmp_path)
        contents.add(target.read_bytes()[:3])
        assert target.read_bytes() in (b"old" * 1000, b"new" * 1000)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["state.pt"]
    assert k > 1 and contents == {b"old", b"new"}


def test_loader_names_a_half_pair_of_one_run_and_detect_falls_back_to_a_complete_pair(tmp_path, capsys):
    _save(tmp_path, BASE + "last", 10)
    _save(tmp_path, BASE, 17)
    _save(tmp_path, "other", 34)
    os.replace(pair_paths(tmp_path, "other")[1], pair_paths(tmp_path, BASE)[1])  # files of two writes
    with pytest.raises(UsageError, match="not written together.*run-s17 and run-s34"):
        load_pair(tmp_path, BASE)
    assert newest_complete_pair(tmp_path) == BASE + "last"
    pair_paths(tmp_path, "other")[0].unlink()
    pair_paths(tmp_path, BASE + "last")[1].unlink()
    with pytest.raises(UsageError, match="half a checkpoint pair"):
        load_pair(tmp_path, BASE + "last")
    with pytest.raises(UsageError, match="no complete checkpoint pair"):
        newest_complete_pair(tmp_path)


def test_leftover_temp_files_of_ours_are_removed_and_nothing_else(tmp_path):
    """Hidden temp files of a killed run are removed by the next run; others' files and a live
    writer's temp file stay."""
    old = tmp_path / ".draem-0123456789ab.tmp"
    theirs = [tmp_path / ".other.tmp", tmp_path / "notes.tmp", tmp_path / ".draem-xyz.tmp"]
    for p in [old, *theirs]:
        p.write_bytes(b"x")
        os.utime(p, (0, 0))
    fd, live = files.new_temp_file(tmp_path)  # locked, as while a writer is writing it
    os.utime(live, (0, 0))
    _, removed = recover(tmp_path)
    assert removed == [old]
    assert live.exists() and all(p.exists() for p in theirs)
    os.close(fd)
    assert recover(tmp_path)[1] == [live]


def test_one_writer_per_name_and_the_lock_dies_with_its_holder(tmp_path):
    """A second writer of the same name is refused, naming the holder's PID; kill -9 frees it."""
    with NameLock(tmp_path, BASE):
        with pytest.raises(UsageError, match=f"process {os.getpid()}"):
            NameLock(tmp_path, BASE).acquire()
        with NameLock(tmp_path, "another_name_"):
            pass  # other names are free
        with pytest.raises(UsageError):
            lock_names(tmp_path, ["free_", BASE])
        with lock_names(tmp_path, ["free_"]):  # the refused call above released "free_"
            pass
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        NameLock(tmp_path, BASE).acquire()
        os.write(w, b"1")
        signal.pause()
    os.read(r, 1)
    with pytest.raises(UsageError, match=f"process {pid}"):
        NameLock(tmp_path, BASE).acquire()
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    with NameLock(tmp_path, BASE):
        pass


@pytest.fixture
def model_dir(tmp_path):
    _save(tmp_path / "ckpt", BASE, 1)
    return tmp_path / "ckpt"


def _run(main, argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, [line for line in err if "error" in line]


def test_detect_never_replaces_an_input_and_replaces_other_outputs(tmp_path, model_dir, capsys):
    """Output onto the input folder or an input image is refused; inputs stay untouched; any other file
    is replaced, as by any command-line tool."""
    imgs = tmp_path / "imgs"
    write_images(imgs, 2, size=40)
    before = {p: p.read_bytes() for p in imgs.iterdir()}
    ck = ["--checkpoint_path", str(model_dir), "--base_model_name", BASE]
    code, err = _run(detect.main, ["--image_path", str(imgs), "--output_path", str(imgs), *ck], capsys)
    assert code == 2 and len(err) == 1 and str(imgs) in err[0] and "inside the input folder" in err[0]
    one = imgs / "000.png"
    code, err = _run(detect.main, ["--image_path", str(one), "--output_path", str(one), *ck], capsys)
    assert code == 2 and len(err) == 1 and err[0].count(str(one)) == 2
    assert {p: p.read_bytes() for p in imgs.iterdir()} == before
    out = tmp_path / "holiday.png"
    out.write_bytes(b"not a picture")
    for _ in range(2):
        assert detect.main(["--image_path", str(one), "--output_path", str(out), *ck]) == 0
    assert cv2.imread(str(out)) is not None


def test_folder_mode_keeps_extensions_and_the_report_names_pictures(tmp_path, model_dir):
    """x.png and x.jpg give two pictures; report.csv names each row's picture."""
    src = tmp_path / "imgs"
    (src / "sub").mkdir(parents=True)
    img = np.full((40, 40, 3), 120, np.uint8)
    for name in ("x.png", "x.jpg", "sub/x.png"):
        cv2.imwrite(str(src / name), img)
    out = tmp_path / "out"
    assert detect.main(["--image_path", str(src), "--output_path", str(out), "--checkpoint_path", str(model_dir),
                        "--base_model_name", BASE]) == 0
    rows = list(csv.DictReader(open(out / "report.csv")))
    assert [(r["file"], r["picture"]) for r in rows] == [
        ("sub/x.png", "sub/x.png.png"), ("x.jpg", "x.jpg.png"), ("x.png", "x.png.png")]
    assert all((out / r["picture"]).is_file() for r in rows)


def test_bad_output_paths_exit_2_at_start_and_create_nothing(tmp_path, model_dir, capsys):
    """A file where a folder is needed, a folder where a file is, an uncreatable path."""
    one = tmp_path / "one.png"
    cv2.imwrite(str(one), np.zeros((40, 40, 3), np.uint8))
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    ck = ["--checkpoint_path", str(model_dir), "--base_model_name", BASE]
    listing = sorted(tmp_path.rglob("*"))
    for argv, what in [(["--image_path", str(one), "--output_path", str(tmp_path)], "existing folder"),
                       (["--image_path", str(one), "--output_path", str(a_file / "x.png")], "is a file"),
                       (["--image_path", str(one), "--output_path", "/proc/draem/x.png"], "/proc"),
                       (["--image_path", str(tmp_path), "--output_path", str(a_file)], "is a file")]:
        code, err = _run(detect.main, argv + ck, capsys)
        assert code == 2 and len(err) == 1 and what in err[0], err
    for out in (str(a_file), "/proc/draem/eval"):
        code, err = _run(evaluate.main, ["--data_path", str(tmp_path), "--output_path", out, *ck], capsys)
        assert code == 2 and len(err) == 1 and out in err[0], err
    assert sorted(tmp_path.rglob("*")) == listing


def test_unwritable_output_folder_exits_2(tmp_path, model_dir, capsys, monkeypatch):
    """Permissions are probed at start (root ignores chmod, so the refusal is injected)."""
    def refuse(folder):
        raise PermissionError(errno.EACCES, "Permission denied")
    monkeypatch.setattr("utils.storage.output_rules.new_temp_file", refuse)
    one = tmp_path / "one.png"
    cv2.imwrite(str(one), np.zeros((40, 40, 3), np.uint8))
    code, err = _run(detect.main, ["--image_path", str(one), "--output_path", str(tmp_path / "o" / "x.png"),
                                   "--checkpoint_path", str(model_dir), "--base_model_name", BASE], capsys)
    assert code == 2 and "Permission denied" in err[0] and not (tmp_path / "o").exists()


@pytest.mark.parametrize("fault", ["EFBIG", "ENOSPC", "EACCES"])
def test_os_errors_while_writing_exit_1_naming_the_file(tmp_path, model_dir, capsys, monkeypatch, fault):
    """The file-size limit (a real `ulimit -f`), a full disk and permissions (injected)."""
    src = tmp_path / "imgs"
    write_images(src, 3, size=40)
    out = tmp_path / "out"
    argv = ["--image_path", str(src), "--output_path", str(out), "--checkpoint_path", str(model_dir),
            "--base_model_name", BASE, "--bs", "1"]
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    if fault == "EFBIG":
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, hard))  # a picture is ~60 KB; report.csv fits
    else:
        def fail(fd):
            raise OSError(getattr(errno, fault), os.strerror(getattr(errno, fault)))
        monkeypatch.setattr("utils.storage.atomic.os.fsync", fail)
    try:
        code, err = _run(detect.main, argv, capsys)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert code == 1 and len(err) == 1 and "000.png.png" in err[0] and ".tmp" not in err[0]
    assert not [p for p in out.rglob("*") if TEMP_RE.match(p.name)]
    if fault == "EFBIG":
        assert (out / "report.csv").read_text().splitlines() == [detect.REPORT_HEADER]


def test_a_245_character_output_name_is_written(tmp_path, model_dir):
    """The temp name is short, so any valid output name works."""
    one = tmp_path / "one.png"
    cv2.imwrite(str(one), np.zeros((40, 40, 3), np.uint8))
    out = tmp_path / ("n" * 241 + ".png")
    assert detect.main(["--image_path", str(one), "--output_path", str(out), "--checkpoint_path", str(model_dir),
                        "--base_model_name", BASE]) == 0
    assert out.is_file()
    atomic_write_bytes(tmp_path / ("m" * 255), b"ok")
    assert (tmp_path / ("m" * 255)).read_bytes() == b"ok"


def test_evaluate_without_masks_reports_pixel_metrics_as_not_available(tmp_path, model_dir, capsys, caplog):
    """No ground_truth/ -> pixel metrics null / '-', one warning, image metrics still there."""
    cls = tmp_path / "widget"
    write_images(cls / "test" / "good", 3, size=40)
    write_images(cls / "test" / "spot", 3, size=40, seed=4)
    out = tmp_path / "eval"
    assert evaluate.main(["--data_path", str(cls), "--checkpoint_path", str(model_dir), "--base_model_name", BASE,
                          "--output_path", str(out), "--json"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    overall = json.loads(printed[-1])
    assert overall["pixel_ap"] is None and overall["aupro"] is None and overall["pixel_auroc"] is None
    assert 0 <= overall["image_auroc"] <= 1
    table_row = next(line for line in printed if line.startswith("overall")).split()
    assert table_row[3:] == ["-", "-", "-"] and table_row[1] != "-"
    assert caplog.text.count("no ground-truth mask") == 1
    saved = json.loads((out / "metrics.json").read_text())["results"]
    assert saved["spot"]["pixel_ap"] is None
    assert list(csv.DictReader(open(out / "metrics.csv")))[0]["aupro"] == ""


def _png_header_only(width, height):
    """A tiny file whose PNG header claims width x height (what a 1 MB decompression bomb looks like)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + \
        chunk(b"IEND", b"")


def test_huge_images_are_refused_from_the_header(tmp_path, model_dir, capsys, monkeypatch):
    """32000 x 32000 is refused before decoding; --max_pixels raises the limit."""
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header_only(32000, 32000))
    decoded = []
    monkeypatch.setattr("utils.data_loader.cv2.imdecode", lambda *a: decoded.append(a))  # returns None
    with pytest.raises(ValueError, match="32000x32000 = 1024.0 megapixels.*--max_pixels"):
        read_image(bomb)
    code, err = _run(detect.main, ["--image_path", str(bomb), "--output_path", str(tmp_path / "o.png"),
                                   "--checkpoint_path", str(model_dir), "--base_model_name", BASE], capsys)
    assert code == 2 and len(err) == 1 and "bomb.png" in err[0] and "megapixels" in err[0]
    assert decoded == []
    code, err = _run(detect.main, ["--image_path", str(bomb), "--output_path", str(tmp_path / "o.png"),
                                   "--checkpoint_path", str(model_dir), "--base_model_name", BASE,
                                   "--max_pixels", str(32000 ** 2)], capsys)
    assert code == 2 and "cannot read image file" in err[0] and len(decoded) == 1  # past the header check


def test_header_sizes_of_every_format():
    from utils.images.reading import header_size
    img = np.random.default_rng(0).integers(0, 255, (37, 53, 3), dtype=np.uint8)
    for ext in (".png", ".jpg", ".bmp", ".tif"):
        assert header_size(cv2.imencode(ext, img)[1]) == (53, 37), ext
    assert header_size(cv2.imencode(".tif", img.astype(np.uint16) * 200)[1]) == (53, 37)
    assert header_size(b"garbage") is None and header_size(b"") is None


def test_check_output_dir_creates_nothing(tmp_path):
    from utils.storage.output_rules import check_output_dir
    a_file = tmp_path / "f"
    a_file.write_text("x")
    for bad, what in [(a_file, "is a file"), (a_file / "sub", "cannot be created"), ("/proc/draem_x", "/proc"),
                      (tmp_path / ("d" * 300), "longer than")]:
        with pytest.raises(UsageError, match=what):
            check_output_dir(bad, "--checkpoint_path")
    check_output_dir(tmp_path / "new" / "deeper", "--log_path")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_signals_stop_after_the_step_or_at_once():
    from utils.runtime import Interrupted, StopOnSignal
    with StopOnSignal() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.interrupted().exit_code == 143
        with pytest.raises(Interrupted):  # a second signal: at once
            os.kill(os.getpid(), signal.SIGINT)
    with pytest.raises(Interrupted) as e, StopOnSignal(armed=False):
        os.kill(os.getpid(), signal.SIGINT)
    assert e.value.exit_code == 130 and "SIGINT" in str(e.value)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


# ------------------------------------------------------------------------------------------- train.py
TINY = ["--size", "32", "--rec_base_width", "4", "--seg_base_width", "2", "--bs", "4", "--amp", "off",
        "--lr", "0.0001"]


def _train(tmp_path, *extra, val_every=0):
    """train.main on a tiny folder; val_every: the Config field (no flag) set on the parsed flags."""
    import train
    data = tmp_path / "widget" / "train" / "good"
    if not data.exists():
        write_images(data, 12)
    parse = train.parse_args
    with pytest.MonkeyPatch.context() as m:
        m.setattr(train, "parse_args", lambda argv: dataclasses.replace(parse(argv), val_every=val_every))
        return train.main(["--data_path", str(data), "--checkpoint_path", str(tmp_path / "ckpt"),
                           "--log_path", str(tmp_path / "logs"), *TINY, *extra])


def _at_loss_call(monkeypatch, k, action):
    """Run `action` at the k-th loss computation (the k-th training step)."""
    from utils.loss import DraemLoss
    real, calls = DraemLoss.forward, {"n": 0}

    def forward(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == k:
            action()
        return real(self, *a, **kw)
    monkeypatch.setattr(DraemLoss, "forward", forward)


def _errors(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("train.py:")]


def test_training_output_paths_are_checked_before_any_work(tmp_path, capsys):
    """Nothing is created, the error comes at once."""
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    write_images(tmp_path / "widget" / "train" / "good", 12)
    import train
    for flags, what in [(["--checkpoint_path", str(a_file)], "is a file"),
                        (["--checkpoint_path", "/proc/draem_ckpt"], "/proc"),
                        (["--log_path", str(a_file / "logs")], "cannot be created"),
                        (["--log_path", "/proc/draem_logs"], "/proc")]:
        argv = ["--data_path", str(tmp_path / "widget"), "--checkpoint_path", str(tmp_path / "ckpt"),
                "--log_path", str(tmp_path / "logs"), *TINY, "--epochs", "1", *flags]
        assert train.main(argv) == 2
        err = _errors(capsys)
        assert len(err) == 1 and what in err[0], err
        assert not (tmp_path / "ckpt").exists() and not (tmp_path / "logs").exists()


def test_a_second_run_on_the_same_names_exits_2_naming_the_first(tmp_path, capsys):
    from utils.storage.pairs import base_model_name
    (tmp_path / "ckpt").mkdir()
    with NameLock(tmp_path / "ckpt", base_model_name(0.0001, 1, 4, "widget")):
        assert _train(tmp_path, "--epochs", "1", "--seed", "1") == 2
        err = _errors(capsys)
        assert len(err) == 1 and f"process {os.getpid()}" in err[0]
    assert not (tmp_path / "logs").exists()
    assert _train(tmp_path, "--epochs", "1") == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_mid_training_writes_the_resume_state_and_exits_128_plus_n(tmp_path, capsys, monkeypatch, signum):
    """One line, exit 143 / 130, resumable; the next run removes our leftover temp files."""
    from utils.storage.pairs import base_model_name
    _at_loss_call(monkeypatch, 3, lambda: os.kill(os.getpid(), signum))
    assert _train(tmp_path, "--epochs", "3", val_every=1) == 128 + signum
    err = _errors(capsys)
    assert len(err) == 1 and signal.Signals(signum).name in err[0] and "--resume" in err[0]
    base = base_model_name(0.0001, 3, 4, "widget")
    resume = torch.load(tmp_path / "ckpt" / f"{base}_resume.pt", weights_only=True)
    assert resume["step"] == 3
    stale = tmp_path / "ckpt" / ".draem-00000000abcd.tmp"
    stale.write_bytes(b"half a checkpoint")
    monkeypatch.undo()
    assert _train(tmp_path, "--epochs", "3", "--resume", val_every=1) == 0
    assert not stale.exists()
    assert _pair_ids(tmp_path / "ckpt", base + "last")[0] == _pair_ids(tmp_path / "ckpt", base + "last")[1]


def test_a_signal_before_training_exits_130_in_one_line(tmp_path, capsys, monkeypatch):
    from utils.loss import DraemLoss
    real = DraemLoss.__init__

    def init(self, *a, **kw):
        real(self, *a, **kw)
        os.kill(os.getpid(), signal.SIGINT)
    monkeypatch.setattr(DraemLoss, "__init__", init)
    assert _train(tmp_path, "--epochs", "1") == 130
    assert len(_errors(capsys)) == 1


@pytest.mark.parametrize("val_every,rows", [(1, 6), (2, 3), (4, 2)])
def test_metrics_csv_has_one_row_per_validation(tmp_path, val_every, rows):
    """3 epochs of 2 steps; the final step's validation is not repeated."""
    assert _train(tmp_path, "--epochs", "3", val_every=val_every) == 0
    run_dir = next((tmp_path / "logs").iterdir())
    steps = [int(r["step"]) for r in csv.DictReader(open(run_dir / "metrics.csv"))]
    assert len(steps) == rows and len(set(steps)) == rows and steps[-1] == 6, steps


def test_a_failed_checkpoint_write_exits_1_and_keeps_the_earlier_pairs(tmp_path, capsys, monkeypatch):
    """In training: disk full at the second validation."""
    from utils.storage.pairs import base_model_name

    def disk_full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    _at_loss_call(monkeypatch, 2, lambda: monkeypatch.setattr("utils.storage.atomic.os.fsync", disk_full))
    assert _train(tmp_path, "--epochs", "2", val_every=1) == 1
    err = _errors(capsys)
    assert len(err) == 1 and "No space left on device" in err[0] and "_last.pt" in err[0]
    base = base_model_name(0.0001, 2, 4, "widget")
    assert _pair_ids(tmp_path / "ckpt", base + "last") == [_pair_ids(tmp_path / "ckpt", base)[0]] * 2
    assert not [p for p in (tmp_path / "ckpt").iterdir() if p.name.endswith(".tmp")]


def test_detect_reads_a_committed_pair_and_changes_nothing(tmp_path):
    """Readers never write: a writer that died after its commit left the new pair in temp files named by its
    journal, plus a leftover temp file; detect.py scores with the committed pair and leaves the folder as it is."""
    ck, new = tmp_path / "ck", tmp_path / "new"
    _save(ck, BASE, 17)
    _save(new, BASE, 34)
    moves = []
    for i, (src, target) in enumerate(zip(pair_paths(new, BASE), pair_paths(ck, BASE))):
        tmp = ck / f".draem-{i:012x}.tmp"
        os.replace(src, tmp)
        moves.append([tmp.name, target.name])
    (ck / ".draem-commit-0123456789abcdef.json").write_text(json.dumps({"moves": moves}))
    (ck / ".draem-aaaaaaaaaaaa.tmp").write_bytes(b"x")
    before = {p.name: p.stat().st_mtime_ns for p in ck.iterdir()}
    image = write_images(tmp_path / "images", 1, size=40)[0]
    assert detect.main(["--image_path", str(image), "--checkpoint_path", str(ck), "--base_model_name", BASE,
                        "--output_path", str(tmp_path / "out.png")]) == 0
    assert newest_complete_pair(ck) == BASE
    assert {p.name: p.stat().st_mtime_ns for p in ck.iterdir()} == before
    assert load_pair(ck, BASE)[1]["pair_id"] == "run-s34"
