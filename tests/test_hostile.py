"""Faults a hostile-but-realistic user finds, one test per case (numbered rows of one table).

The scripts are driven only through their public interface: `main(argv)` in-process, or a subprocess where a real
signal, another user or a stopped writer is needed; and the files they leave on disk. What an old version of the
product wrote that a test must plant (a commit journal, a killed writer's temp file, a hand-edited checkpoint) is
made by the three helpers below, the only places that know those formats.
"""
import contextlib
import csv
import json
import os
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import detect
import evaluate
import train
from tests.conftest import write_images
from tests.test_teach import disk_full_below

ROOT = Path(__file__).resolve().parents[1]
BASE = "DRAEM_test_0.0001_1_bs4_widget_"  # the public checkpoint name of TRAIN on the class "widget"
TRAIN = ["--size", "32", "--rec_base_width", "4", "--seg_base_width", "2", "--bs", "4", "--epochs", "1",
         "--amp", "off", "--scale", "native"]
LATIN1_NAME = b"caf\xe9"  # a file name in Latin-1: not valid UTF-8
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
SUBPROCESS_LIMIT_S = 180  # a hung child fails the test instead of hanging the suite (not a timed assertion)


# ------------------------------------------------- the product's internal formats (update here when they change)
def plant_journal(folder, moves):
    """A commit journal of a group write in `folder`: [[temp name, target name], ...] to be moved on recovery."""
    path = Path(folder) / f".draem-commit-{secrets.token_hex(8)}.json"
    path.write_text(json.dumps({"moves": moves}))
    return path


def leftover_temp(folder):
    """The temp file a writer killed by kill -9 leaves in `folder` (old, no process holds it)."""
    path = Path(folder) / f".draem-{secrets.token_hex(6)}.tmp"
    path.write_bytes(b"half a picture")
    os.utime(path, (0, 0))
    return path


def edit_checkpoint(path, change):
    """Load one checkpoint file as plain data, let `change(obj)` edit it, save it back (a hand-made bad file)."""
    obj = torch.load(path, map_location="cpu", weights_only=True)
    change(obj)
    torch.save(obj, path)


# --------------------------------------------------------------------------------------------------- helpers
@dataclass
class Result:
    code: int
    out: str
    err: str
    logs: str

    @property
    def errors(self):
        return [line for line in self.err.splitlines() if "error" in line.lower()]

    @property
    def said(self):
        """Everything the user sees on stderr: printed lines and log records."""
        return self.err + "\n" + self.logs


def call(main, argv, capsys, caplog):
    """main(argv) as the script's `sys.exit(main())` would end: an uncaught exception is a traceback, exit 1."""
    capsys.readouterr()
    caplog.clear()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse
        code = e.code
    except BaseException:  # noqa: BLE001 - what the user would see is exactly this traceback
        traceback.print_exc()
        code = 1
    out, err = capsys.readouterr()
    return Result(code, out, err, caplog.text)


def assert_refused(res, *named):
    """Exit 2, one error line naming every string in `named`, no traceback."""
    assert "Traceback" not in res.err, res.err[-2000:]
    assert res.code == 2, (res.code, res.err[-2000:])
    assert len(res.errors) == 1, res.errors
    for name in named:
        assert str(name) in res.errors[0], (name, res.errors[0])


def assert_clean_success(res):
    assert "Traceback" not in res.err, res.err[-2000:]
    assert res.code == 0, (res.code, res.err[-2000:])
    res.out.encode("utf-8")  # a real UTF-8 stdout is strict: undecodable names must be printed escaped


def as_from_a_terminal():
    """Popen preexec_fn: default SIGINT/SIGTERM in the child, as a shell gives them (a background job's parent may
    ignore SIGINT, and the child would inherit that)."""
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_DFL)


def script(name, *args):
    return [sys.executable, str(ROOT / name), *(str(a) for a in args)]


def wait_for(predicate, proc, what):
    """Poll until predicate() (an event on disk), failing if the child ends first or hangs."""
    deadline = time.monotonic() + SUBPROCESS_LIMIT_S
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"the child ended (rc {proc.returncode}) before {what}: {proc.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no {what} within {SUBPROCESS_LIMIT_S} s")
        time.sleep(0.02)


def non_utf8_path(folder, suffix=b""):
    """folder/café<suffix> with a Latin-1 é, as str (surrogate-escaped, as sys.argv gives it); skip if refused."""
    path = os.path.join(os.fsencode(folder), LATIN1_NAME + suffix)
    try:
        with open(path, "wb"):
            pass
        os.remove(path)
    except OSError:
        pytest.skip("this file system refuses non-UTF-8 names")
    return os.fsdecode(path)


def png_bytes(shape=(40, 40), seed=0):
    img = np.random.default_rng(seed).integers(0, 255, (*shape, 3), dtype=np.uint8)
    return cv2.imencode(".png", img)[1].tobytes()


def copy_pair(src_dir, dst_dir, names):
    dst_dir.mkdir(parents=True, exist_ok=True)
    for src_name, dst_name in names:
        shutil.copy2(src_dir / src_name, dst_dir / dst_name)
    return dst_dir


def snapshot(folder):
    return {p: p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def make_class(root, n=2):
    """An MVTec-style class folder: test/good and test/spot (no masks: pixel metrics not available)."""
    write_images(root / "test" / "good", n, size=40)
    write_images(root / "test" / "spot", n, size=40, seed=4)
    return root


# -------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def space(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    write_images(root / "widget" / "train" / "good", 12)
    return root


def _train_run(space, name, seed):
    """TRAIN on space/widget with a fresh log folder: (checkpoint folder, exit code)."""
    ck = space / f"ckpt_{name}"
    code = train.main(["--data_path", str(space / "widget"), "--checkpoint_path", str(ck),
                       "--log_path", str(space / f"logs_{name}"), "--seed", str(seed), *TRAIN])
    return ck, code


@pytest.fixture(scope="module")
def pair(space):
    """Run A: the shared --scale native pair (folder holding BASE, BASE + "last" and the resume state)."""
    ck, code = _train_run(space, "a", 0)
    assert code == 0
    return ck


@pytest.fixture(scope="module")
def pair_b(space, pair):
    """Run B: the same command as run A with another seed and a fresh log folder."""
    ck, code = _train_run(space, "b", 1)
    assert code == 0
    return ck


@pytest.fixture
def ck(pair, tmp_path):
    """A private copy of run A's checkpoint folder (tests that change it)."""
    return Path(shutil.copytree(pair, tmp_path / "ckpt"))


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "part.png"
    path.write_bytes(png_bytes())
    return path


def detect_argv(ck_dir, image_path, output, base=BASE, *extra):
    return ["--image_path", image_path, "--output_path", output, "--checkpoint_path", ck_dir,
            "--base_model_name", base, *extra]


# ------------------------------------------------------------------------------------- 1-3: one run's pair
@pytest.mark.parametrize("rec,seg", [("last.pt", "last_seg.pt"), (".pt", "_seg.pt")], ids=["row1-last", "row2-best"])
def test_rows_1_2_halves_of_two_runs_of_one_command_are_refused(pair, pair_b, tmp_path, image, capsys, caplog,
                                                                rec, seg):
    """A's reconstructive half with B's discriminative half: refused naming both files, never "same run"."""
    base = BASE + ("last" if rec.startswith("last") else "")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy2(pair / (BASE + rec), mixed / (base + ".pt"))
    shutil.copy2(pair_b / (BASE + seg), mixed / (base + "_seg.pt"))
    res = call(detect.main, detect_argv(mixed, image, tmp_path / "o.png", base), capsys, caplog)
    assert_refused(res, base + ".pt", base + "_seg.pt")
    assert "same run" not in res.errors[0]
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("base", [BASE, BASE + "last"], ids=["best", "last"])
def test_row_3_recalibration_is_refused_while_training_holds_the_pair(space, ck, tmp_path, capsys, caplog, base):
    """A training run (stopped with SIGSTOP once its run folder exists) holds the name of both of its pairs:
    exit 2 naming its PID."""
    logs, good = tmp_path / "logs", tmp_path / "line_good"
    write_images(good, 4)
    proc = subprocess.Popen(script("train.py", "--data_path", space / "widget", "--checkpoint_path", ck,
                                   "--log_path", logs, *TRAIN), cwd=tmp_path, env=ENV, text=True,
                            preexec_fn=as_from_a_terminal, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: any(logs.glob("*/config.json")), proc, "its run folder")
        os.kill(proc.pid, signal.SIGSTOP)
        before = snapshot(ck)
        res = call(evaluate.main, ["--checkpoint_path", ck, "--base_model_name", base,
                                   "--recalibrate", good], capsys, caplog)
    finally:
        proc.kill()
        proc.communicate()
    assert_refused(res, str(proc.pid))
    assert snapshot(ck) == before


# ----------------------------------------------------------------------- 4-7: our own files, written whole
def test_row_4_recovery_ignores_journal_entries_outside_the_folder(space, ck, tmp_path, image, capsys, caplog):
    """A journal naming ../victim.txt (or moving our temp file out) is ignored by readers and writers alike."""
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's own file")
    ours = leftover_temp(ck)
    journal = plant_journal(ck, [["../victim.txt", "victim.txt"], [ours.name, "../outside.txt"]])
    res = call(detect.main, detect_argv(ck, image, tmp_path / "o.png"), capsys, caplog)
    assert_clean_success(res)
    res = call(train.main, ["--data_path", space / "widget", "--checkpoint_path", ck, "--log_path", tmp_path / "logs",
                            *TRAIN], capsys, caplog)
    assert_clean_success(res)
    assert victim.read_text() == "the user's own file"
    assert not (ck / "victim.txt").exists() and not (tmp_path / "outside.txt").exists()
    assert journal.name in res.said  # the warning names it


def test_row_5_evaluate_refuses_outputs_inside_the_test_split(pair, tmp_path, capsys, caplog):
    cls = make_class(tmp_path / "widget")
    before = snapshot(cls)
    res = call(evaluate.main, ["--data_path", cls, "--checkpoint_path", pair, "--base_model_name", BASE,
                               "--save_images", "--output_path", cls / "test"], capsys, caplog)
    assert_refused(res, "--output_path")
    assert snapshot(cls) == before


def test_row_6_a_full_log_disk_names_the_file_and_leaves_no_partial_config(space, tmp_path, capsys, caplog):
    """Full disk simulated with a file-size limit (EFBIG; a tmpfs needs root: tried by hand)."""
    logs = tmp_path / "logs"
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (512, hard))  # the lock file fits, config.json does not
    try:
        res = call(train.main, ["--data_path", space / "widget", "--checkpoint_path", tmp_path / "ckpt",
                                "--log_path", logs, *TRAIN], capsys, caplog)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert "Traceback" not in res.err
    assert res.code == 1 and len(res.errors) == 1 and "config.json" in res.errors[0], res.errors
    for config in logs.rglob("config.json"):
        json.loads(config.read_text())  # whole, or not there
    assert not [p for p in logs.rglob(".*")], "temp files left"


def test_row_7_training_on_a_class_folder_with_a_non_utf8_name(space, tmp_path, capsys, caplog):
    cls = non_utf8_path(tmp_path)
    shutil.copytree(space / "widget" / "train", Path(cls) / "train")
    ckpt, logs = tmp_path / "ckpt", tmp_path / "logs"
    res = call(train.main, ["--data_path", cls, "--checkpoint_path", ckpt, "--log_path", logs, *TRAIN],
               capsys, caplog)
    assert_clean_success(res)
    assert len(list(ckpt.glob("*_seg.pt"))) == 2  # the best and the last pair
    run_dir, = logs.iterdir()
    assert (run_dir / "command.txt").read_bytes().strip()
    json.loads((run_dir / "config.json").read_text(encoding="utf-8"))


# -------------------------------------------------------------------------- 8-13: any file name, any size
@pytest.mark.parametrize("as_json", [False, True], ids=["row8-text", "row9-json"])
def test_rows_8_9_detect_one_image_with_a_non_utf8_name(pair, tmp_path, capsys, caplog, as_json):
    name = non_utf8_path(tmp_path, b".png")
    Path(name).write_bytes(png_bytes())
    out = tmp_path / "o.png"
    res = call(detect.main, detect_argv(pair, name, out, BASE, *(["--json"] if as_json else [])), capsys, caplog)
    assert_clean_success(res)
    assert cv2.imread(str(out)) is not None
    if as_json:
        assert 0 <= json.loads(res.out.strip().splitlines()[-1])["score"] <= 1


@pytest.mark.parametrize("as_json", [False, True], ids=["row10-text", "row11-json"])
def test_rows_10_11_folder_mode_with_a_non_utf8_name_among_good_ones(pair, tmp_path, capsys, caplog, as_json):
    src = tmp_path / "imgs"
    write_images(src, 3, size=40)
    Path(non_utf8_path(src, b".png")).write_bytes(png_bytes())
    out = tmp_path / "out"
    res = call(detect.main, detect_argv(pair, src, out, BASE, *(["--json"] if as_json else [])), capsys, caplog)
    assert_clean_success(res)
    rows = list(csv.DictReader(open(out / "report.csv", encoding="utf-8")))  # escaped: valid UTF-8
    assert len(rows) == 4
    assert len([p for p in out.iterdir() if p.suffix == ".png"]) == 4


@pytest.mark.parametrize("shape", [(1, 1), (1, 300)], ids=["row12-1x1", "row13-1x300"])
def test_rows_12_13_tiny_images_through_a_native_scale_model(pair, tmp_path, capsys, caplog, shape):
    src = tmp_path / "tiny.png"
    src.write_bytes(png_bytes(shape))
    out = tmp_path / "o.png"
    res = call(detect.main, detect_argv(pair, src, out), capsys, caplog)
    assert_clean_success(res)
    assert cv2.imread(str(out)) is not None


# -------------------------------------------------------------- 14-17: bad states, sizes and checkpoints
def test_row_14_resume_with_other_widths_is_refused(space, ck, tmp_path, capsys, caplog):
    before = snapshot(ck)
    res = call(train.main, ["--data_path", space / "widget", "--checkpoint_path", ck, "--log_path", tmp_path / "logs",
                            *TRAIN, "--rec_base_width", "8", "--seg_base_width", "4", "--resume"], capsys, caplog)
    assert_refused(res)
    assert "--rec_base_width" in res.errors[0] or "_resume.pt" in res.errors[0], res.errors
    assert snapshot(ck) == before


def test_row_15_an_impossible_size_is_refused_naming_the_flag(space, tmp_path, capsys, caplog):
    res = call(train.main, ["--data_path", space / "widget", "--checkpoint_path", tmp_path / "ckpt",
                            "--log_path", tmp_path / "logs", *TRAIN, "--size", "2097152"], capsys, caplog)
    assert_refused(res, "--size")


def _drop_state_dict(obj):
    del obj["state_dict"]


def _drop_size(obj):
    del obj["config"]["size"]


@pytest.mark.parametrize("change,halves", [(_drop_state_dict, (".pt",)), (_drop_size, (".pt", "_seg.pt"))],
                         ids=["row16-no-state_dict", "row17-config-without-size"])
def test_rows_16_17_bad_checkpoint_contents_are_refused_naming_the_file(pair, tmp_path, image, capsys, caplog,
                                                                         change, halves):
    folder = copy_pair(pair, tmp_path / "ck", [(BASE + ".pt",) * 2, (BASE + "_seg.pt",) * 2])
    for half in halves:
        edit_checkpoint(folder / (BASE + half), change)
    res = call(detect.main, detect_argv(folder, image, tmp_path / "o.png"), capsys, caplog)
    assert_refused(res, BASE)
    assert not (tmp_path / "o.png").exists()


# ------------------------------------------------------------------------------ 18-19: clean interruptions
@pytest.mark.parametrize("name,signum", [("train.py", signal.SIGINT), ("detect.py", signal.SIGTERM),
                                         ("evaluate.py", signal.SIGINT)], ids=["train-INT", "detect-TERM",
                                                                                "evaluate-INT"])
def test_row_18_a_signal_during_the_imports_is_one_line_and_128_plus_n(tmp_path, name, signum):
    """The signal is sent once the child is importing torch (-X importtime prints each finished import)."""
    args = {"train.py": ["--data_path", tmp_path], "detect.py": ["--image_path", tmp_path / "x.png"],
            "evaluate.py": ["--data_path", tmp_path, "--base_model_name", BASE]}[name]
    cmd = [sys.executable, "-X", "importtime", *script(name, *args)[1:]]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=ENV, text=True, preexec_fn=as_from_a_terminal,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if "torch" in line:
                proc.send_signal(signum)
                break
        _, rest = proc.communicate(timeout=SUBPROCESS_LIMIT_S)
    finally:
        proc.kill()
    said = [line for line in "".join(seen[-1:]).splitlines() + rest.splitlines()
            if not line.startswith("import time:")]
    assert "Traceback" not in "\n".join(said), said[-20:]
    assert proc.returncode == 128 + signum and len(said) == 1, (proc.returncode, said[-20:])


def test_row_19_ctrl_c_in_folder_mode_reports_what_was_finished(pair, tmp_path):
    src, out = tmp_path / "imgs", tmp_path / "out"
    write_images(src, 200, size=40)
    proc = subprocess.Popen(script("detect.py", *detect_argv(pair, src, out)), cwd=tmp_path, env=ENV, text=True,
                            preexec_fn=as_from_a_terminal, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: out.is_dir() and any(p.suffix == ".png" for p in out.iterdir()), proc, "a first picture")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=SUBPROCESS_LIMIT_S)
    finally:
        proc.kill()
    assert "Traceback" not in err and proc.returncode == 130, (proc.returncode, err[-2000:])
    rows = list(csv.DictReader(open(out / "report.csv", encoding="utf-8")))
    pictures = sorted(p.name for p in out.iterdir() if p.suffix == ".png")
    assert 0 < len(rows) < 200 and sorted(r["picture"] for r in rows) == pictures


# ------------------------------------------------------------------------------- 20-23: say what was not done
def test_row_20_folder_mode_with_no_readable_image_exits_2(pair, tmp_path, capsys, caplog):
    src = tmp_path / "imgs"
    src.mkdir()
    for i in range(3):
        (src / f"{i}.png").write_bytes(b"not an image")
    res = call(detect.main, detect_argv(pair, src, tmp_path / "out"), capsys, caplog)
    assert_refused(res, src)


def _nobody_can_run():
    """False: not root (this user runs it); True: user nobody can run this checkout's detect.py; None: neither (no
    setpriv, or the checkout or its interpreter sits in a folder nobody cannot read, as `mktemp -d` makes)."""
    if os.geteuid() != 0:
        return False
    prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    try:
        return subprocess.run([*prefix, sys.executable, "-c", "open(__import__('sys').argv[1]).close()",
                               str(ROOT / "detect.py")], capture_output=True, timeout=30).returncode == 0 or None
    except (OSError, subprocess.SubprocessError):
        return None


def test_row_21_an_unreadable_subfolder_is_warned_about(pair, capsys, caplog):
    """Permissions enforced: as root the run is made by user nobody (setpriv); otherwise by this user."""
    nobody = _nobody_can_run()
    if nobody is None:
        pytest.skip("running as root, and user nobody cannot run this checkout (no setpriv, or a folder "
                    "nobody cannot read): permissions are not enforced")
    base = Path(tempfile.mkdtemp(prefix="draem-hostile-"))  # reachable by nobody (pytest's tmp is 0700)
    try:
        base.chmod(0o755)
        ck_dir = copy_pair(pair, base / "ck", [(BASE + ".pt",) * 2, (BASE + "_seg.pt",) * 2])
        src = base / "imgs"
        write_images(src, 2, size=40)
        write_images(src / "locked", 1, size=40)
        for p in [ck_dir, src, *ck_dir.iterdir(), *src.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        (src / "locked").chmod(0)
        (base / "w").mkdir(mode=0o777)
        (base / "w").chmod(0o777)
        out = base / "w" / "out"
        argv = detect_argv(ck_dir, src, out)
        if nobody:
            prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
            run = subprocess.run([*prefix, *script("detect.py", *argv)], cwd=base / "w", text=True,
                                 env={**ENV, "MPLCONFIGDIR": str(base / "w" / "mpl"), "HOME": str(base / "w")},
                                 capture_output=True, timeout=SUBPROCESS_LIMIT_S)
            code, said = run.returncode, run.stderr
        else:
            res = call(detect.main, argv, capsys, caplog)
            code, said = res.code, res.said
        assert "Traceback" not in said and code == 0, (code, said[-2000:])
        assert len(list(csv.DictReader(open(out / "report.csv")))) == 2
        assert [line for line in said.splitlines() if str(src / "locked") in line], said[-2000:]
    finally:
        if (base / "imgs" / "locked").exists():
            (base / "imgs" / "locked").chmod(0o755)
        shutil.rmtree(base)


def test_row_22_a_killed_detects_temp_file_is_removed_by_the_next_run(pair, tmp_path, capsys, caplog):
    src, out = tmp_path / "imgs", tmp_path / "out"
    write_images(src, 2, size=40)
    assert_clean_success(call(detect.main, detect_argv(pair, src, out), capsys, caplog))
    stale = leftover_temp(out)
    assert_clean_success(call(detect.main, detect_argv(pair, src, out), capsys, caplog))
    assert not stale.exists()


def test_row_23_an_ignored_flag_gets_a_warning_or_a_refusal(space, tmp_path, capsys, caplog):
    """--recipe paper ignores --surface_defect_prob: a warning naming it (or, once the flag is gone, exit 2)."""
    res = call(train.main, ["--data_path", space / "widget", "--checkpoint_path", tmp_path / "ckpt",
                            "--log_path", tmp_path / "logs", *TRAIN, "--recipe", "paper",
                            "--surface_defect_prob", "0.5"], capsys, caplog)
    assert "Traceback" not in res.err
    if res.code == 2:
        assert_refused(res, "--surface_defect_prob")
    else:
        assert res.code == 0 and "--surface_defect_prob" in res.said, res.said[-2000:]


def test_row_23_obj_id_with_a_single_class_folder_is_warned_about(space, tmp_path, capsys, caplog):
    res = call(train.main, ["--data_path", space / "widget", "--checkpoint_path", tmp_path / "ckpt",
                            "--log_path", tmp_path / "logs", *TRAIN, "--obj_id", "3"], capsys, caplog)
    assert_clean_success(res)
    assert "--obj_id" in res.said, res.said[-2000:]


def test_row_23_target_false_reject_without_recalibrate_is_warned_about(pair, tmp_path, capsys, caplog):
    cls = make_class(tmp_path / "widget")
    res = call(evaluate.main, ["--data_path", cls, "--checkpoint_path", pair, "--base_model_name", BASE,
                               "--output_path", tmp_path / "eval", "--target_false_reject", "0.05"], capsys, caplog)
    assert_clean_success(res)
    assert "--target_false_reject" in res.said, res.said[-2000:]


# ---------------------------------------------------------------- 24-27: inputs are never replaced nor skipped
def _routes(ck, tmp_path, target):
    """Ways an output path can name `target` (a file in the folder `ck`): itself, through `..`, a symlink, a hard
    link."""
    (tmp_path / "sub").mkdir(exist_ok=True)
    link, hard = tmp_path / "link.png", tmp_path / "hard.png"
    link.symlink_to(target)
    os.link(target, hard)
    return {"itself": target, "dotdot": ck / "sub" / ".." / target.name, "symlink": link, "hardlink": hard}


@pytest.mark.parametrize("route", ["itself", "dotdot", "symlink", "hardlink"])
@pytest.mark.parametrize("flag,half", [("--output_path", "_seg.pt"), ("--output_path", ".pt"),
                                       ("--export_onnx", "_seg.pt")])
def test_row_24_detect_never_replaces_the_pair_it_loads(ck, tmp_path, image, capsys, caplog, route, flag, half):
    """The reported case: --output_path ck/<base>_seg.pt exited 0 and drew the picture over the model."""
    target = ck / (BASE + half)
    out = _routes(ck, tmp_path, target)[route]
    before = snapshot(ck)
    argv = detect_argv(ck, image, tmp_path / "o.png")
    argv[argv.index("--output_path") + 1] = out if flag == "--output_path" else tmp_path / "o.png"
    res = call(detect.main, [*argv, *(["--export_onnx", out] if flag == "--export_onnx" else [])], capsys, caplog)
    assert_refused(res, flag, out, target)
    assert snapshot(ck) == before and not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("case", ["image-hardlink", "map-symlink", "folder-report", "folder-picture"])
def test_row_24_detect_never_replaces_its_images(pair, tmp_path, image, capsys, caplog, case):
    """An output that is the image (a hard link), a --save_maps file linked to it, or a folder-mode file planted as
    a link to the pair: refused naming both, nothing written."""
    src, out = tmp_path / "imgs", tmp_path / "out"
    write_images(src, 2, size=40)
    if case == "image-hardlink":
        os.link(image, tmp_path / "same.png")
        argv, named = detect_argv(pair, image, tmp_path / "same.png"), image
    elif case == "map-symlink":
        (tmp_path / "o.map.png").symlink_to(image)
        argv, named = detect_argv(pair, image, tmp_path / "o.png", BASE, "--save_maps"), image
    else:
        out.mkdir()
        planted = out / ("report.csv" if case == "folder-report" else "000.png.png")
        planted.symlink_to(pair / (BASE + "_seg.pt"))
        argv, named = detect_argv(pair, src, out), pair / (BASE + "_seg.pt")
    before = snapshot(tmp_path)
    res = call(detect.main, argv, capsys, caplog)
    assert_refused(res, named)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("case", ["metrics-link", "picture-link", "inside-recalibrate", "taught-pair"])
def test_row_25_evaluate_never_replaces_what_it_reads(ck, tmp_path, capsys, caplog, case):
    """metrics.json or a --save_images picture linked to the pair; the output folder inside the --recalibrate
    folder; a recalibration whose pair is one of the good images it reads (a hard link): refused naming both,
    nothing written."""
    cls, good = make_class(tmp_path / "widget"), tmp_path / "line_good"
    write_images(good, 4, size=40)
    out = tmp_path / "eval"
    argv = ["--checkpoint_path", ck, "--base_model_name", BASE, "--output_path", out]
    if case == "metrics-link":
        out.mkdir()
        (out / "metrics.json").symlink_to(ck / (BASE + "_seg.pt"))
        argv, named = [*argv, "--data_path", cls], ["--checkpoint_path", BASE + "_seg.pt"]
    elif case == "picture-link":
        (out / "images" / "spot").mkdir(parents=True)
        (out / "images" / "spot" / "001.png.png").symlink_to(ck / (BASE + ".pt"))
        argv, named = [*argv, "--data_path", cls, "--save_images"], ["--checkpoint_path", BASE + ".pt"]
    elif case == "inside-recalibrate":
        argv = ["--checkpoint_path", ck, "--base_model_name", BASE, "--output_path", good / "eval"]
        argv, named = [*argv, "--data_path", cls, "--recalibrate", good], ["--recalibrate", good]
    else:
        os.link(ck / (BASE + ".pt"), good / "model.png")
        argv, named = [*argv, "--recalibrate", good], ["--recalibrate", good / "model.png"]
    before = snapshot(tmp_path)
    res = call(evaluate.main, argv, capsys, caplog)
    assert_refused(res, *named)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("route", ["symlink", "dotdot"])
def test_row_26_train_never_writes_into_the_folder_it_reads(space, tmp_path, capsys, caplog, route):
    """--checkpoint_path reaching into --data_path through a symlink or `..`: refused naming both, nothing made."""
    data = tmp_path / "widget"
    shutil.copytree(space / "widget", data)
    if route == "symlink":
        (tmp_path / "ck").symlink_to(data / "train" / "good", target_is_directory=True)
        ck = tmp_path / "ck"
    else:
        ck = tmp_path / "logs" / ".." / "widget" / "train" / "good"
    before = snapshot(data)
    res = call(train.main, ["--data_path", data, "--checkpoint_path", ck, "--log_path", tmp_path / "logs", *TRAIN],
               capsys, caplog)
    assert_refused(res, "--checkpoint_path", "--data_path")
    assert snapshot(data) == before


@pytest.fixture
def deadline():
    """A blocking open (a FIFO with no writer) raises instead of hanging the suite (not a timed assertion)."""
    def expire(signum, frame):
        raise TimeoutError("an input that is a special file was opened")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(SUBPROCESS_LIMIT_S)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def plant_special_files(folder):
    """A FIFO named pipe.png and a link zero_dev.png -> /dev/zero in `folder`; skip where there are none."""
    if not hasattr(os, "mkfifo") or not os.path.exists("/dev/zero"):
        pytest.skip("no FIFOs or no /dev/zero on this system")
    os.mkfifo(folder / "pipe.png")
    (folder / "zero_dev.png").symlink_to("/dev/zero")
    return ["pipe.png", "zero_dev.png"]


def test_row_27_detect_names_special_files_and_counts_them(pair, tmp_path, capsys, caplog, deadline):
    src, out = tmp_path / "imgs", tmp_path / "out"
    write_images(src, 2, size=40)
    specials = plant_special_files(src)
    res = call(detect.main, detect_argv(pair, src, out), capsys, caplog)
    assert_clean_success(res)
    assert len(list(csv.DictReader(open(out / "report.csv")))) == 2
    assert all(name in res.said for name in specials), res.said[-2000:]
    assert "2 of 4 images inspected" in res.said, res.said[-2000:]


def test_row_27_evaluate_names_special_files_in_the_test_split_and_the_good_images(ck, tmp_path, capsys, caplog,
                                                                                  deadline):
    cls, good = make_class(tmp_path / "widget", n=2), tmp_path / "line_good"
    write_images(good, 4, size=40)
    specials = plant_special_files(cls / "test" / "good") + plant_special_files(good)
    res = call(evaluate.main, ["--data_path", cls, "--checkpoint_path", ck, "--base_model_name", BASE,
                               "--recalibrate", good, "--output_path", tmp_path / "eval"], capsys, caplog)
    assert_clean_success(res)
    assert all(res.said.count(name) >= 2 for name in set(specials)), res.said[-2000:]  # in both folders
    assert "4 of 6 test images inspected" in res.said and "4 of 6 images inspected" in res.said, res.said[-2000:]


def test_row_27_training_names_special_files(space, tmp_path, capsys, caplog, deadline):
    data = tmp_path / "widget"
    shutil.copytree(space / "widget", data)
    specials = plant_special_files(data / "train" / "good")
    res = call(train.main, ["--data_path", data, "--checkpoint_path", tmp_path / "ck", "--log_path",
                            tmp_path / "logs", *TRAIN], capsys, caplog)
    assert_clean_success(res)
    assert all(name in res.said for name in specials), res.said[-2000:]
    assert "unreadable" in res.said, res.said[-2000:]


# ------------------------------------------------------------------- 28-29: teaching reads and writes only as it should
@contextlib.contextmanager
def memory_cap(extra=2 << 30):
    """The address space capped at this process's present size + `extra` bytes: a read that never ends raises
    MemoryError instead of exhausting the machine (not a timed assertion); no cap without /proc/self/statm."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    try:
        with open("/proc/self/statm") as f:
            size = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        yield
        return
    resource.setrlimit(resource.RLIMIT_AS, (size + extra, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@pytest.mark.parametrize("special", ["pipe.png", "zero_dev.png"])
def test_row_28_teaching_refuses_a_special_file_among_its_images_unopened(ck, tmp_path, capsys, caplog, deadline,
                                                                         special):
    """--add_good with a FIFO (no writer) or a link to /dev/zero among good images: exit 2 at once naming it, nothing
    written, the pair untouched (it used to wait forever on the FIFO and exhaust memory on /dev/zero)."""
    good, logs = tmp_path / "good", tmp_path / "logs"
    write_images(good, 2)
    for name in plant_special_files(good):
        if name != special:
            os.remove(good / name)
    before = snapshot(ck)
    t0 = time.monotonic()
    with memory_cap():
        res = call(train.main, ["--add_good", good, "--checkpoint_path", ck, "--log_path", logs,
                                "--base_model_name", BASE], capsys, caplog)
    assert_refused(res, special, "not opened", "nothing taught")
    assert time.monotonic() - t0 < SUBPROCESS_LIMIT_S
    assert snapshot(ck) == before and not logs.exists()


def test_row_29_a_full_log_disk_during_teaching_leaves_neither_the_pair_nor_its_record(ck, tmp_path, capsys, caplog,
                                                                                      monkeypatch):
    """--log_path on a full disk (ENOSPC for every file written below it; a real full tmpfs was tried by hand): exit 1
    naming the file, and no taught pair that detect.py and evaluate.py would take without its teaching.json."""
    good, logs = tmp_path / "good", tmp_path / "logs"
    write_images(good, 2)
    logs.mkdir()
    before = snapshot(ck)
    disk_full_below(logs, monkeypatch)
    res = call(train.main, ["--add_good", good, "--checkpoint_path", ck, "--log_path", logs, "--base_model_name",
                            BASE], capsys, caplog)
    assert "Traceback" not in res.err and res.code == 1, (res.code, res.err[-2000:])
    assert len(res.errors) == 1 and "config.json: No space left on device" in res.errors[0], res.errors
    assert snapshot(ck) == before and list(logs.iterdir()) == []


# -------------------------------------------------------------- 30: the part's own shape at the default scale
AUTO_TRAIN = [a for a in TRAIN if a not in ("--scale", "native")]  # tiny networks, the default scale ("auto")


def _shaped_folder(folder, shapes, seed=0):
    """One smooth random image per (H, W) in `shapes`."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i, (h, w) in enumerate(shapes):
        img = cv2.resize((rng.random((4, 4, 3)) * 255).astype(np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(folder / f"{i:02d}.png"), img)
    return folder


@pytest.mark.parametrize("shapes", [[(1, 4000)] * 6, [(4000, 1)] * 6, [(10, 10)] * 6,
                                    [(40, 40), (30, 200), (200, 30), (8, 8), (1, 300), (64, 20)],
                                    [(3000, 4000)] * 2 + [(300, 400)] * 4],
                         ids=["row30-1x4000", "row30-4000x1", "row30-smaller-than-a-tile", "row30-mixed",
                              "row30-huge"])
def test_row_30_odd_shapes_train_and_detect_at_the_default_scale(tmp_path, capsys, caplog, shapes):
    """Extreme aspect ratios, images smaller than a tile, a folder mixing sizes and aspects, 12-megapixel images:
    trained and detected at the default scale, each at its own aspect; never a traceback."""
    data = _shaped_folder(tmp_path / "odd", shapes)
    ck = tmp_path / "ckpt"
    res = call(train.main, ["--data_path", data, "--checkpoint_path", ck, "--log_path", tmp_path / "logs",
                            "--val_fraction", "0.34", *AUTO_TRAIN], capsys, caplog)
    assert_clean_success(res)
    base = "DRAEM_test_0.0001_1_bs4_odd_"
    for i, (h, w) in enumerate(shapes[:3]):
        out = tmp_path / f"o{i}.png"
        res = call(detect.main, ["--image_path", data / f"{i:02d}.png", "--output_path", out, "--checkpoint_path", ck,
                                 "--base_model_name", base, "--json"], capsys, caplog)
        assert_clean_success(res)
        assert json.loads(res.out.strip().splitlines()[-1])["verdict"] in ("OK", "NG")
        assert cv2.imread(str(out)) is not None
