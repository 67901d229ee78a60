"""The README's quick start, `python train.py && python detect.py`, at tiny scale: demo data generation,
a few training steps, the demo evaluation table, then detect.py's default demo image and newest demo model."""
import functools
import re
from pathlib import Path

import cv2

import detect
import train
import utils.synthesis.demo_data as demo_data
from utils import config

README = Path(__file__).resolve().parents[1] / "README.md"


def test_quickstart_commands_are_the_ones_tested_here():
    text = README.read_text()
    assert "python train.py && python detect.py" in text
    assert "pip install -r requirements-test.txt && python -m pytest -q" in text
    ci = (README.parent / ".ci" / "run").read_text()
    assert "pip install -q --disable-pip-version-check -r requirements-test.txt" in ci
    assert re.search(r"^python -m pytest -q$", ci, re.M)


def test_demo_train_then_detect_tiny(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # data/demo, checkpoints/, logs/ and the PNG land here, as for a new user
    monkeypatch.setitem(config.PRESETS, "cpu", dict(size=32, rec_base_width=4, seg_base_width=2, bs=4, epochs=2))
    tiny = functools.partial(demo_data.make_demo_dataset, n_train=12, n_test_good=4, n_test_per_defect=2, shape=(64, 256))
    monkeypatch.setattr(train, "make_demo_dataset", tiny)
    monkeypatch.setattr(train, "DEMO_MINUTES", 0.1)  # the demo trains for its minutes: six seconds here
    assert train.main(["--amp", "off"]) == 0
    out = capsys.readouterr().out
    assert "demo test split" in out and "overall" in out
    assert (tmp_path / "checkpoints" / "DRAEM_test_0.0001_2_bs4_coil_.pt").is_file()
    assert detect.main([]) == 0
    assert re.search(r"scratch/000.png: score [01]\.\d{4}  (OK|NG)", capsys.readouterr().out)
    img = cv2.imread(str(tmp_path / "single_test_result.png"))
    assert img is not None and img.shape[0] > img.shape[1]  # a 4:1 strip: its four panels stacked
