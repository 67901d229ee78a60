"""Teaching a trained pair confirmed-good images (train.py --add_good, utils/training/teach.py): the bank grows then
re-thins, leave-self-out, the taught pair untouched, the refusals, kill -9 and Ctrl-C, and who scored an image."""
import hashlib
import json
import os
import re
import shutil
import signal

import pytest
import torch

import detect
import evaluate
import train
from model import DRAEM
from model.feature_prior import greedy_coreset, grow_bank
from tests.conftest import WIDGET_PAIR, write_images
from tests.test_faults import _crash_at
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
    with_self = teaching.FeaturePrior(bank[everything], fusion.features.size, fusion.features.backbone)(
        torch.stack([im.image for im in images]))
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
    seen = set()
    for k in range(1, 12):
        ckpt = tmp_path / f"k{k}"
        shutil.copytree(folder, ckpt)
        lesson = Lesson(str(ckpt), WIDGET_PAIR, str(tmp_path / "new"), str(tmp_path / f"logs{k}"))
        if not _crash_at(k, lambda: teach(lesson)):
            break
        assert {p.name: digest(p) for p in pair_paths(ckpt, WIDGET_PAIR)} == old
        load_pair(ckpt, WIDGET_PAIR)
        written = any(p.exists() for p in current_paths(ckpt, TAUGHT))
        if written:
            load_pair(ckpt, TAUGHT)  # committed: whole (readers see it through the journal)
        seen.add(written)
    assert seen == {False, True}  # crashes before and after the commit were both visited


def test_ctrl_c_during_teaching_leaves_the_folder_as_it_was(pair, tmp_path, monkeypatch, capsys):
    folder, _ = pair
    write_images(tmp_path / "new", 2, size=64, seed=18)
    before = listing(folder)

    def interrupted(*a, **kw):
        os.kill(os.getpid(), signal.SIGINT)
    monkeypatch.setattr(teaching, "grow_bank", interrupted)
    assert teach_cli(folder, tmp_path / "new") == 130
    assert listing(folder) == before


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
