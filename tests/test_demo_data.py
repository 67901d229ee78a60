import json

import cv2
import numpy as np
import pytest

from utils.synthesis import demo_data
from utils.synthesis.demo_data import DEFECT_TYPES, DEMO_CLASS, demo_image_path, make_demo_dataset

TINY = dict(n_train=4, n_test_good=2, n_test_per_defect=1, size=64, seed=0)


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def tiny(tmp_path):
    return make_demo_dataset(tmp_path, **TINY)


def test_layout_and_counts(tiny, tmp_path):
    assert tiny == tmp_path / DEMO_CLASS
    assert sorted(p.name for p in (tiny / "train" / "good").iterdir()) == ["000.png", "001.png", "002.png", "003.png"]
    assert len(list((tiny / "test" / "good").glob("*.png"))) == 2
    assert sorted(p.name for p in (tiny / "test").iterdir()) == sorted(DEFECT_TYPES + ("good",))
    for kind in DEFECT_TYPES:
        assert [p.name for p in (tiny / "test" / kind).iterdir()] == ["000.png"]
        assert [p.name for p in (tiny / "ground_truth" / kind).iterdir()] == ["000_mask.png"]
    assert [p.name for p in tmp_path.iterdir()] == [DEMO_CLASS]  # no temporary folders left behind
    img = cv2.imread(str(tiny / "train" / "good" / "000.png"), cv2.IMREAD_UNCHANGED)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    assert demo_image_path(tmp_path).is_file()


def test_masks_binary_and_match_defects(tiny):
    for kind in DEFECT_TYPES:
        for img_path in (tiny / "test" / kind).glob("*.png"):
            mask_path = tiny / "ground_truth" / kind / f"{img_path.stem}_mask.png"
            mask = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
            assert mask.shape == (64, 64) and set(np.unique(mask)) == {0, 255}, kind


def test_defect_alters_exactly_the_mask():
    for kind in DEFECT_TYPES:
        rng = np.random.default_rng(1)
        base = demo_data.brushed_metal(rng, 64)
        img, mask = demo_data.add_defect(rng, base.copy(), kind)
        changed = np.abs(img - base).max(axis=-1) > 0
        assert mask.any() and not (changed & ~mask).any(), kind
        assert np.abs(img - base)[mask].max() > 0.1, kind  # clearly above the texture's ~0.04 variation


def test_same_seed_same_files_other_seed_differs(tmp_path):
    a = _files(make_demo_dataset(tmp_path / "a", **TINY))
    b = _files(make_demo_dataset(tmp_path / "b", **TINY))
    c = _files(make_demo_dataset(tmp_path / "c", **{**TINY, "seed": 1}))
    assert a == b
    name = next(k for k in a if k.suffix == ".png")
    assert a[name] != c[name]


def test_second_call_does_not_regenerate(tiny, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("regenerated")

    monkeypatch.setattr(demo_data, "_write_all", fail)
    assert make_demo_dataset(tmp_path, **TINY) == tiny


def test_incomplete_or_different_folder_is_regenerated(tiny, tmp_path):
    before = _files(tiny)
    (tiny / demo_data.MARKER).unlink()  # as if a run had been interrupted
    (tiny / "train" / "good" / "000.png").unlink()
    assert _files(make_demo_dataset(tmp_path, **TINY)) == before

    make_demo_dataset(tmp_path, **{**TINY, "n_train": 2})  # other parameters replace the cached copy
    assert len(list((tiny / "train" / "good").glob("*.png"))) == 2
    assert json.loads((tiny / demo_data.MARKER).read_text())["n_train"] == 2
