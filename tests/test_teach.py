"""Teaching a trained pair confirmed-good images (train.py --add_good, utils/training/teach.py): the bank grows then
re-thins, leave-self-out, the taught pair untouched, the refusals, kill -9, a full disk and Ctrl-C (the new pair
with its record, or neither), and who scored an image."""
import errno
import hashlib
import json
import logging
import os
import random
import re
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path

import pytest
import torch

import detect
import evaluate
import train
from model import DRAEM
from model.feature_prior import greedy_coreset, grow_bank
from tests.conftest import WIDGET_PAIR, write_images
from tests.test_faults import _crash_at
from utils import cli
from utils.storage.atomic import TEMP_RE
from utils.storage.pairs import current_paths, load_pair, newest_complete_pair, pair_paths, save_pair
from utils.training import teach as teaching
from utils.training.teach import Lesson, teach

TAUGHT = WIDGET_PAIR + "taught1_"


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def pair(trained, tmp_path):
    """A fresh checkpoint folder holding the module's trained widget pair (with its prior), and its class."""
    _, cls, ckpt = trained
    folder = tmp_path / "ckpt"
    folder.mkdir()
    for p in pair_paths(ckpt, WIDGET_PAIR):
        shutil.copy2(p, folder / p.name)
    return folder, cls


def teach_cli(folder, new, *extra, base=WIDGET_PAIR):
    flags = ["--add_good", str(new), "--checkpoint_path", str(folder), "--log_path", str(folder.parent / "logs")]
    return train.main(flags + (["--base_model_name", base] if base else []) + list(extra))


def listing(*folders):
    return sorted(str(p) for f in folders if f.exists() for p in f.rglob("*"))


def bank_rows(folder, base):
    return torch.load(pair_paths(folder, base)[1], weights_only=True)["prior"]["bank"].shape[0]


def taught_state(ckpt, logs, name=TAUGHT):
    """"both": the pair `name` (as readers see it) and its whole teaching.json naming that pair; "neither"; "record":
    teaching.json alone (kill -9 between the two writes). Fails on a pair without its record."""
    record = logs / name / "teaching.json"
    if any(p.exists() for p in current_paths(ckpt, name)):
        assert record.is_file(), f"the pair {name} without its teaching.json"
        assert json.loads(record.read_text())["pair_id"] == load_pair(ckpt, name)[1]["pair_id"]
        return "both"
    return "record" if record.exists() else "neither"


def no_leftovers(*folders):
    return [p for f in folders if f.exists() for p in f.rglob("*") if TEMP_RE.match(p.name) or "lock" in p.name]


def test_grow_bank_grows_while_there_is_room_then_rethins_keeping_the_far_patches():
    g = torch.Generator().manual_seed(0)
    pool = torch.randn(400, 16, generator=g)
    old = pool[greedy_coreset(pool, 40, per_image=400)]  # a bank in greedy order, as training leaves it
    new = torch.randn(20, 16, generator=g) * 0.1 + 10  # two images of 10 patches far from everything
    assert torch.equal(grow_bank(old, new, 10, capacity=100), torch.arange(60))  # room: all join
    rows = grow_bank(old, new, 10, capacity=50)
    assert len(rows) == 50 == len(set(rows.tolist()))
    assert rows[0] == 0 and (rows >= 40).any()  # the coarse cover stays, the new far patches join
    assert set(range(30)) <= set(rows.tolist())  # the first picks of the old bank are kept


def test_leave_self_out_scores_a_new_image_without_its_own_bank_rows(pair, tmp_path):
    folder, _ = pair
    write_images(tmp_path / "new", 3, size=64, seed=11)
    model, meta = load_pair(folder, WIDGET_PAIR)
    fusion = teaching.PriorFusion.from_state(meta["prior"])
    images = teaching.new_images(tmp_path / "new", [])
    teaching.read_all(images, meta["config"], 10**8)
    bank, source, feats = teaching.taught_bank(fusion, images, meta["config"], 10**6, "cpu")
    assert (source == 0).sum() == feats[0][0, 0].numel()  # room: every row of image 0 joined
    goods = [(im.image, j, feats[j]) for j, im in enumerate(images)]
    alone = teaching.leave_self_out_novelty(fusion, bank, source, goods, meta["config"], "cpu")
    everything = torch.ones_like(source, dtype=torch.bool)
    with_self = teaching.same_prior(fusion.features, bank[everything])(torch.stack([im.image for im in images]))
    # against its own rows an image looks perfectly normal (distances of fp16 rounding), so each is scored without
    assert with_self.max() < 0.1 and all(m.mean() > 10 * s.mean() for m, s in zip(alone, with_self))


def test_teaching_writes_a_new_pair_and_leaves_the_old_one_untouched(pair, tmp_path, capsys):
    folder, _ = pair
    before = {p.name: digest(p) for p in pair_paths(folder, WIDGET_PAIR)}
    new = write_images(tmp_path / "new" / "sub", 4, size=64, seed=12)
    assert teach_cli(folder, tmp_path / "new") == 0
    assert {p.name: digest(p) for p in pair_paths(folder, WIDGET_PAIR)} == before  # byte for byte
    objs = [torch.load(p, weights_only=True) for p in pair_paths(folder, TAUGHT)]
    assert objs[0]["pair_id"] == objs[1]["pair_id"] != load_pair(folder, WIDGET_PAIR)[1]["pair_id"]
    record = objs[1]["prior"]["teachings"][0]
    assert record["teaching"] == 1 and record["n_images"] == 4 and record["from"] == WIDGET_PAIR
    assert sorted(record["digests"]) == sorted(digest(p) for p in new)
    assert bank_rows(folder, TAUGHT) > bank_rows(folder, WIDGET_PAIR)  # grown: the bank had room
    assert objs[0]["calibration"]["threshold"] is not None
    ran = json.loads((tmp_path / "logs" / TAUGHT / "teaching.json").read_text())
    assert sorted(f["sha256"] for f in ran["files"]) == sorted(record["digests"]) and "time" in ran
    assert newest_complete_pair(folder) == TAUGHT  # detect.py's default pair
    # taught again: a second teaching of the taught pair, its own name; the first one stays loadable
    write_images(tmp_path / "more", 3, size=64, seed=13)
    assert teach_cli(folder, tmp_path / "more", base=None) == 0
    second = torch.load(pair_paths(folder, WIDGET_PAIR + "taught2_")[1], weights_only=True)["prior"]
    assert [t["teaching"] for t in second["teachings"]] == [1, 2]
    load_pair(folder, TAUGHT)


def test_a_full_bank_is_rethinned_to_its_capacity(pair, tmp_path):
    folder, _ = pair
    write_images(tmp_path / "new", 2, size=64, seed=14)
    first = teach(Lesson(str(folder), WIDGET_PAIR, str(tmp_path / "new"), str(tmp_path / "logs")))
    grown = bank_rows(folder, first)
    write_images(tmp_path / "more", 2, size=64, seed=15)
    second = teach(Lesson(str(folder), first, str(tmp_path / "more"), str(tmp_path / "logs"), capacity=grown))
    assert bank_rows(folder, second) == grown  # the bank re-thinned to its capacity
    assert second == WIDGET_PAIR + "taught2_"


def _bad_folder(tmp_path, case, folder):
    new = tmp_path / "new"
    if case == "empty":
        new.mkdir()
    elif case == "not a folder":
        pass
    elif case == "unreadable":
        write_images(new, 2, size=64)
        (new / "broken.png").write_bytes(b"not an image")
    elif case == "twice":
        write_images(new, 2, size=64)
        shutil.copy(new / "000.png", new / "copy.png")
    elif case == "size class":
        write_images(new, 2, size=400)  # trained on 64 px images
    elif case == "prior none":
        write_images(new, 2, size=64)
        save_pair(DRAEM(4, 2), folder, "plain", {"size": 64}, {"threshold": 0.5}, "p1")
        return new, "plain"
    elif case == "authors":
        write_images(new, 2, size=64)
        model = DRAEM(4, 2)
        torch.save(model.reconstructive.state_dict(), folder / "authors.pckl")
        torch.save(model.discriminative.state_dict(), folder / "authors_seg.pckl")
        return new, "authors"
    return new, WIDGET_PAIR


@pytest.mark.parametrize("case, says", [
    ("empty", "no readable images"), ("not a folder", "not a folder"), ("unreadable", "cannot read .*broken.png"),
    ("twice", "000.png and .*copy.png are the same image"), ("size class", "another size class"),
    ("prior none", "--prior none"), ("authors", "authors' released")])
def test_refusals_are_one_line_exit_2_and_write_nothing(pair, tmp_path, capsys, case, says):
    folder, _ = pair
    new, base = _bad_folder(tmp_path, case, folder)
    before = listing(folder, tmp_path / "logs")
    assert teach_cli(folder, new, base=base) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("train.py: error:")
    assert re.search(says, err[0]), err[0]
    assert listing(folder, tmp_path / "logs") == before


def test_an_image_taught_before_is_refused(pair, tmp_path, capsys):
    folder, _ = pair
    write_images(tmp_path / "new", 2, size=64, seed=16)
    assert teach_cli(folder, tmp_path / "new") == 0
    assert teach_cli(folder, tmp_path / "new", base=TAUGHT) == 2
    assert "taught already (teaching 1)" in capsys.readouterr().err


def test_kill_9_at_any_write_leaves_the_old_pair_and_no_half_new_one(pair, tmp_path):
    folder, _ = pair
    write_images(tmp_path / "new", 2, size=64, seed=17)
    old = {p.name: digest(p) for p in pair_paths(folder, WIDGET_PAIR)}
    seen = []
    for k in range(1, 40):
        ckpt, logs = tmp_path / f"k{k}", tmp_path / f"logs{k}"
        shutil.copytree(folder, ckpt)
        lesson = Lesson(str(ckpt), WIDGET_PAIR, str(tmp_path / "new"), str(logs))
        if not _crash_at(k, lambda: teach(lesson)):
            break
        assert {p.name: digest(p) for p in pair_paths(ckpt, WIDGET_PAIR)} == old
        load_pair(ckpt, WIDGET_PAIR)
        seen.append(taught_state(ckpt, logs))  # a committed pair is whole, and never without its record
    # every write was a crash point: the record's files, then the pair's (before and after its commit)
    assert seen[0] == "neither" and "record" in seen and seen[-1] == "both", seen


def test_a_record_a_kill_left_without_its_pair_keeps_its_name(pair, tmp_path):
    folder, _ = pair
    orphan = tmp_path / "logs" / TAUGHT / "teaching.json"  # as kill -9 between the record and the pair leaves it
    orphan.parent.mkdir(parents=True)
    orphan.write_text('{"pair": "%s", "pair_id": "killed"}' % TAUGHT)
    write_images(tmp_path / "new", 2, size=64, seed=22)
    assert teach_cli(folder, tmp_path / "new") == 0
    assert taught_state(folder, tmp_path / "logs", WIDGET_PAIR + "taught2_") == "both"
    assert taught_state(folder, tmp_path / "logs") == "record" and "killed" in orphan.read_text()


def disk_full_below(folder, monkeypatch):
    """ENOSPC for every file written below `folder` (at its fsync, as a full disk reports delayed allocation)."""
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("no /proc/self/fd to tell which file an fsync writes")
    real, below = os.fsync, str(Path(folder).resolve()) + os.sep

    def fsync(fd):
        path = os.readlink(f"/proc/self/fd/{fd}")
        if path.startswith(below) and os.path.isfile(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)
    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.parametrize("full", ["logs", "ckpt"])
def test_a_full_disk_leaves_the_new_pair_with_its_record_or_neither(pair, tmp_path, monkeypatch, capsys, full):
    """The record is written first: a full log disk fails before the pair; a full checkpoint disk fails after the
    record, which is removed again. Either way exit 1, one line naming the file, nothing taught."""
    folder, _ = pair
    logs = tmp_path / "logs"
    logs.mkdir()
    write_images(tmp_path / "new", 2, size=64, seed=23)
    before = listing(folder, logs)
    disk_full_below(logs if full == "logs" else folder, monkeypatch)
    assert teach_cli(folder, tmp_path / "new") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0], err
    assert ("config.json" if full == "logs" else TAUGHT + ".pt") in err[0], err
    assert listing(folder, logs) == before  # the pair untouched, no new pair, no record, no temp file


def test_a_fifo_among_the_training_held_out_images_is_skipped_with_a_warning(pair, tmp_path, caplog):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this system")
    good = write_images(tmp_path / "held", 1, size=64)[0]
    os.mkfifo(tmp_path / "held" / "pipe.png")
    config = load_pair(pair[0], WIDGET_PAIR)[1]["config"]
    held = teaching.read_held_out([tmp_path / "held" / "pipe.png", good], config, 10**8)
    assert len(held) == 1 and "pipe.png: a FIFO" in caplog.text


def test_ctrl_c_during_teaching_leaves_the_folder_as_it_was(pair, tmp_path, monkeypatch, capsys):
    folder, _ = pair
    write_images(tmp_path / "new", 2, size=64, seed=18)
    before = listing(folder)
    real = teaching.grow_bank

    def interrupted(*a, **kw):
        os.kill(os.getpid(), signal.SIGINT)  # the step it arrives in ends; the next one is not taken
        return real(*a, **kw)
    monkeypatch.setattr(teaching, "grow_bank", interrupted)
    assert teach_cli(folder, tmp_path / "new") == 130
    assert capsys.readouterr().err.strip().splitlines() == ["train.py: stopped by SIGINT; nothing taught"]
    assert listing(folder) == before and not (tmp_path / "logs").exists()


@pytest.mark.parametrize("signals, state", [(1, "both"), (2, "neither")])
def test_a_signal_during_the_commit_finishes_it_and_a_second_one_undoes_it(pair, tmp_path, monkeypatch, capsys,
                                                                           signals, state):
    """SIGINT at the pair's first write, once the record is written: one signal lets the commit end (the line says
    it was written); a second one stops at once, and the record goes with the pair that was not committed."""
    folder, _ = pair
    write_images(tmp_path / "new", 2, size=64, seed=25)
    real, below, sent = os.fsync, str(folder.resolve()) + os.sep, []

    def fsync(fd):
        if not sent and os.readlink(f"/proc/self/fd/{fd}").startswith(below):
            sent.append(fd)
            for _ in range(signals):
                os.kill(os.getpid(), signal.SIGINT)
        return real(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    assert teach_cli(folder, tmp_path / "new") == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("train.py: stopped by SIGINT"), err
    assert ("was written, with its record" in err[0]) == (state == "both"), err
    assert taught_state(folder, tmp_path / "logs") == state and not no_leftovers(folder, tmp_path / "logs")


def _teach_in_a_child(argv, delay):
    """train.py's main(argv) in a forked child, as `python train.py` runs it (its quiet start's handlers, a traceback
    for anything uncaught, exit code from main), SIGINT `delay` seconds after it starts (None: none).
    Returns (exit code, stderr)."""
    ready, (out_r, out_w) = os.pipe(), os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            cli.exit_quietly_on_signals("train.py", "__main__")
            os.write(ready[1], b"!")
            torch.set_num_threads(1)  # the parent's OpenMP pool is not in the child: a parallel region would hang
            os.dup2(out_w, 2)
            sys.stderr = open(2, "w", buffering=1, errors="backslashreplace", closefd=False)
            logging.getLogger().handlers.clear()  # train.main configures logging as in a fresh process
            code = train.main(argv)
        except BaseException:  # noqa: BLE001 - the script would print exactly this traceback
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code)
    os.close(out_w)
    os.read(ready[0], 1)  # the child's handlers are those of the script from here on
    if delay is not None:
        time.sleep(delay)
        os.kill(pid, signal.SIGINT)
    with open(out_r, "rb") as f:
        err = f.read().decode("utf-8", "backslashreplace")
    _, status = os.waitpid(pid, 0)
    for fd in ready:
        os.close(fd)
    return os.waitstatus_to_exitcode(status), err


def test_sigint_at_20_random_moments_ends_in_one_line_and_leaves_the_pair_with_its_record_or_neither(pair, tmp_path):
    """Each teaching runs in a forked child (no second torch import: seconds each), stopped at a seeded random
    moment of its whole run, its writes and its log lines included."""
    folder, _ = pair
    old = {p.name: digest(p) for p in pair_paths(folder, WIDGET_PAIR)}
    write_images(tmp_path / "new", 2, size=64, seed=24)

    def argv(i):
        shutil.copytree(folder, tmp_path / f"ck{i}")
        return ["--add_good", str(tmp_path / "new"), "--checkpoint_path", str(tmp_path / f"ck{i}"),
                "--log_path", str(tmp_path / f"logs{i}"), "--base_model_name", WIDGET_PAIR]
    for run in ("cold", "warm"):  # the second, as the twenty run: files and the backbone in the page cache
        t0 = time.monotonic()
        assert _teach_in_a_child(argv(run), None)[0] == 0
        whole = time.monotonic() - t0
    rng, outcomes = random.Random(0), []
    for i in range(20):
        code, err = _teach_in_a_child(argv(i), rng.uniform(0, 1.1 * whole))
        said = [line for line in err.splitlines() if "stopped" in line or "rror" in line or "Traceback" in line]
        assert "Traceback" not in err and "Logging error" not in err, err[-3000:]
        if code == 130:
            assert len(said) == 1 and said[0].startswith("train.py: stopped by SIGINT"), err[-3000:]
        else:
            assert code == 0 and not said and "wrote the pair" in err, (code, err[-3000:])
        ck, logs = tmp_path / f"ck{i}", tmp_path / f"logs{i}"
        state = taught_state(ck, logs)
        assert state != "record" and (state == "both") == ("wrote the pair" in err), (state, err[-3000:])
        assert {p.name: digest(p) for p in pair_paths(ck, WIDGET_PAIR)} == old and not no_leftovers(ck, logs)
        outcomes.append((code, state))
    print(f"teaching {whole:.2f}s; SIGINT outcomes:", outcomes)
    assert {c for c, _ in outcomes} <= {0, 130}


def test_detect_and_evaluate_name_the_pair_and_teaching_that_scored(pair, trained, tmp_path, capsys):
    folder, cls = pair
    write_images(tmp_path / "new", 2, size=64, seed=19)
    assert teach_cli(folder, tmp_path / "new") == 0
    capsys.readouterr()
    image = cls / "test" / "good" / "000.png"
    assert detect.main(["--image_path", str(image), "--checkpoint_path", str(folder), "--json",
                        "--output_path", str(tmp_path / "one.png")]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["pair"] == TAUGHT and line["teaching"] == 1
    out = tmp_path / "results"
    assert detect.main(["--image_path", str(cls / "test"), "--checkpoint_path", str(folder),
                        "--output_path", str(out)]) == 0
    assert (out / "report.csv").read_text().splitlines()[1].endswith("," + TAUGHT)
    assert "teaching 1: +2 good images" in (out / "index.html").read_text()
    # evaluate.py without --base_model_name: the class's newest complete pair, as detect.py takes it
    assert evaluate.main(["--data_path", str(cls), "--checkpoint_path", str(folder), "--output_path",
                          str(tmp_path / "eval"), "--json"]) == 0
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["checkpoint"]["base_model_name"] == TAUGHT
    assert evaluate.main(["--data_path", str(cls.parent), "--obj_id", "-1", "--checkpoint_path", str(folder),
                          "--output_path", str(tmp_path / "all")]) == 0
    assert "the newest pairs on" in capsys.readouterr().out


def test_a_picture_title_names_the_taught_pair(pair, tmp_path, monkeypatch):
    folder, cls = pair
    write_images(tmp_path / "new", 2, size=64, seed=20)
    assert teach_cli(folder, tmp_path / "new") == 0
    titles = []
    monkeypatch.setattr(detect, "write_scored_image", lambda *a, **kw: titles.append(a[6]))
    assert detect.main(["--image_path", str(cls / "test" / "good" / "000.png"), "--checkpoint_path", str(folder),
                        "--output_path", str(tmp_path / "x.png")]) == 0
    assert len(titles) == 1 and titles[0].startswith(f"000.png  ·  {TAUGHT} (teaching 1: +2 good images, ")


def test_the_taught_pair_never_lands_inside_the_folder_it_teaches(pair, capsys):
    folder, _ = pair
    write_images(folder / "new", 2, size=64, seed=19)  # the good images inside the checkpoint folder
    before = listing(folder)
    assert teach_cli(folder, folder) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--checkpoint_path" in err[0] and "--add_good" in err[0]
    assert listing(folder) == before
