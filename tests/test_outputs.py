"""detect.py --save_maps (map, mask, overlay per image), the results pages of detect.py and evaluate.py, and
evaluate.py on a root of classes (--obj_id -1), on the tiny widget pair of conftest.py."""
import csv
import json
import re
import shutil

import cv2
import numpy as np

import detect
import evaluate
from tests.conftest import WIDGET_PAIR, write_images
from utils.outputs.maps import FULL_SCALE, mask_from_16bit
from utils.storage.pairs import pair_paths

DATA_RE = re.compile(r'<script type="application/json" id="page-data">(.*?)</script>', re.S)


def page_rows(path):
    return json.loads(DATA_RE.search(path.read_text()).group(1))["rows"]


def check_map_files(folder, row, threshold, size):
    """The three files of a row: map at the input's size, mask == map above the threshold, overlay RGB."""
    map16 = cv2.imread(str(folder / row["map"]), cv2.IMREAD_UNCHANGED)
    mask = cv2.imread(str(folder / row["mask"]), cv2.IMREAD_UNCHANGED)
    over = cv2.imread(str(folder / row["overlay"]), cv2.IMREAD_UNCHANGED)
    assert map16.dtype == np.uint16 and map16.shape == size
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
    assert np.array_equal(mask, mask_from_16bit(map16, threshold))
    assert np.array_equal(mask > 0, map16 / FULL_SCALE > threshold)
    assert over.shape == (*size, 3)
    return map16, mask


def test_folder_save_maps_names_every_file(trained, tmp_path, capsys):
    root, cls, ckpt = trained
    inputs = tmp_path / "in"
    shutil.copytree(cls / "test", inputs / "parts")
    write_images(inputs / "wide", 2, size=64)
    for p in (inputs / "wide").iterdir():  # not the working size: maps are resized to the input's own size
        cv2.imwrite(str(p), cv2.resize(cv2.imread(str(p)), (90, 50)))
    out = tmp_path / "results"
    assert detect.main(["--image_path", str(inputs), "--base_model_name", WIDGET_PAIR, "--checkpoint_path",
                        str(ckpt), "--output_path", str(out), "--save_maps", "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    rows = list(csv.DictReader(open(out / "report.csv")))
    assert len(rows) == len(lines) == 8 and list(rows[0]) == ["file", "picture", "score", "verdict", "pair", "map",
                                                             "mask", "overlay"]
    for row, line in zip(rows, lines):
        assert row["map"] == line["map"] == row["file"] + ".map.png" and line["file"] == row["file"]
        assert row["mask"] == line["mask"] == row["file"] + ".mask.png"
        assert row["overlay"] == line["overlay"] == row["file"] + ".overlay.png"
        assert abs(float(row["score"]) - line["score"]) < 1e-6
        size = (50, 90) if row["file"].startswith("wide") else (64, 64)
        map16, mask = check_map_files(out, row, line["threshold"], size)
        if line["verdict"] == "NG":  # the score never exceeds the map's maximum
            assert map16.max() / FULL_SCALE >= line["score"] - 1e-3
    names = [r["name"] for r in page_rows(out / "index.html")]
    assert sorted(names) == sorted(r["file"] for r in rows)
    assert all((out / "thumbs" / f"{n}.jpg").is_file() for n in names)


def test_single_image_save_maps_beside_the_picture(trained, tmp_path, capsys):
    root, cls, ckpt = trained
    out = tmp_path / "one.png"
    assert detect.main(["--image_path", str(cls / "test" / "spot" / "000.png"), "--base_model_name", WIDGET_PAIR,
                        "--checkpoint_path", str(ckpt), "--output_path", str(out), "--save_maps", "--json"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (line["map"], line["mask"], line["overlay"]) == tuple(str(tmp_path / f"one.{k}.png")
                                                                for k in ("map", "mask", "overlay"))
    check_map_files(tmp_path, {k: line[k] for k in ("map", "mask", "overlay")}, line["threshold"], (64, 64))


def test_evaluate_page_has_labels_and_types(trained, tmp_path):
    root, cls, ckpt = trained
    out = tmp_path / "eval"
    assert evaluate.main(["--data_path", str(cls), "--base_model_name", WIDGET_PAIR, "--checkpoint_path", str(ckpt),
                          "--output_path", str(out), "--save_images"]) == 0
    rows = page_rows(out / "index.html")
    assert len(rows) == 6 and {r["type"] for r in rows} == {"good", "spot"}
    assert all(r["label"] == ("good" if r["type"] == "good" else "defect") for r in rows)
    assert all((out / "images" / f"{r['name']}.png").is_file() for r in rows)


def two_class_root(tmp_path, cls, ckpt):
    """widget and gadget (the same images), each with its pair under the prefix DRAEM_test_0.001_1_bs4."""
    root, pairs = tmp_path / "root", tmp_path / "pairs"
    root.mkdir()
    pairs.mkdir()
    for name in ("widget", "gadget"):
        (root / name).symlink_to(cls, target_is_directory=True)
        for src, dst in zip(pair_paths(ckpt, WIDGET_PAIR), pair_paths(pairs, f"DRAEM_test_0.001_1_bs4_{name}_")):
            shutil.copy(src, dst)
    return root, pairs


def test_evaluate_every_class_of_a_root(trained, tmp_path, capsys):
    root, cls, ckpt = trained
    data, pairs = two_class_root(tmp_path, cls, ckpt)
    out = tmp_path / "eval"
    assert evaluate.main(["--data_path", str(data), "--obj_id", "-1", "--base_model_name", "DRAEM_test_0.001_1_bs4",
                          "--checkpoint_path", str(pairs), "--output_path", str(out), "--json"]) == 0
    text = capsys.readouterr().out
    summary = json.loads(text.strip().splitlines()[-1])
    assert list(summary["classes"]) == ["gadget", "widget"]
    assert summary["mean"]["image_auroc"] == summary["classes"]["widget"]["image_auroc"]
    assert len(re.findall(r"^overall +\d", text, re.M)) == 2 and re.search(r"^mean +\d", text, re.M)
    assert "mean at the stored thresholds: false-reject rate" in text
    assert all((out / c / "metrics.json").is_file() for c in ("gadget", "widget"))


def test_evaluate_root_errors_name_the_classes(trained, tmp_path, capsys):
    root, cls, ckpt = trained
    data, pairs = two_class_root(tmp_path, cls, ckpt)
    (pairs / "DRAEM_test_0.001_1_bs4_widget__seg.pt").unlink()
    out = tmp_path / "eval"
    common = ["--data_path", str(data), "--base_model_name", "DRAEM_test_0.001_1_bs4_", "--checkpoint_path",
              str(pairs), "--output_path", str(out)]
    for extra, expected in (([], "0=gadget, 1=widget"), (["--obj_id", "2"], "out of range"),
                            (["--obj_id", "-1"], "widget")):
        assert evaluate.main(common + extra) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expected in err
    assert not out.exists()  # the missing pair is found before any class is evaluated
