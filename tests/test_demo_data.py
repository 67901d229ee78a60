import json

import cv2
import numpy as np
import pytest

from tests.conftest import stroke_width
from utils.synthesis import demo_data
from utils.synthesis.demo_data import DEFECT_TYPES, DEMO_CLASS, SHAPE, demo_image_path, make_demo_dataset

TINY = dict(n_train=4, n_test_good=2, n_test_per_defect=1, shape=(64, 256), seed=0)


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _u8(img):
    return np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)


def _shrink(img, f=0.6):
    return cv2.resize(img, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)


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
    assert img.shape == (64, 256, 3) and img.dtype == np.uint8
    assert demo_image_path(tmp_path).is_file()


def test_written_masks_are_the_altered_pixels(tiny):
    # The base surface is the first thing each defect image's generator draws: rebuild it, compare the files.
    for kind in DEFECT_TYPES:
        img = cv2.imread(str(tiny / "test" / kind / "000.png"))[..., ::-1]  # RGB, as written
        mask = cv2.imread(str(tiny / "ground_truth" / kind / "000_mask.png"), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (64, 256) and set(np.unique(mask)) == {0, 255}, kind
        base = _u8(demo_data.brushed_metal(demo_data._image_rng(0, "test", kind, 0), (64, 256)))
        changed = (img != base).any(axis=-1)
        assert not (changed & (mask == 0)).any(), kind  # nothing altered outside the mask
        assert changed[mask > 0].mean() > 0.8, kind  # and the mask is (nearly all) visibly altered


def test_full_size_surface_is_brushed_along_the_strip():
    img = demo_data.brushed_metal(np.random.default_rng(0))
    assert img.shape == SHAPE + (3,) and img.dtype == np.float32
    assert 0.2 < img.min() and img.max() < 0.85  # mild exposure and lighting: nothing clipped
    grey = img.mean(axis=-1)
    along, across = np.abs(np.diff(grey, axis=1)).mean(), np.abs(np.diff(grey, axis=0)).mean()
    assert across > 1.5 * along  # streaks run along x: neighbours along a row differ less than across rows


@pytest.mark.parametrize("kind", DEFECT_TYPES)
def test_defect_alters_exactly_the_mask(kind):
    for seed in range(3):
        rng = np.random.default_rng(seed)
        base = demo_data.brushed_metal(rng)
        img, mask = demo_data.add_defect(rng, base.copy(), kind)
        changed = np.abs(img - base).max(axis=-1) > 0
        assert mask.any() and not (changed & ~mask).any()
        assert 0.15 < np.abs(img - base)[mask].max() < 0.4  # clearly above the texture's ~0.04, yet subtle


@pytest.mark.parametrize("kind, lo, hi", [("scratch", 80, 300), ("crack", 60, 250 * 1.9)])  # crack: + branches
def test_hairlines_are_thin_and_long(kind, lo, hi):
    for seed in range(4):
        rng = np.random.default_rng(seed)
        _, mask = demo_data.add_defect(rng, demo_data.brushed_metal(rng), kind)
        width = stroke_width(mask)
        assert 1.0 <= width <= 2.8, (seed, width)  # 1-2 px drawn, plus the anti-aliased fringe
        assert lo * 0.9 <= mask.sum() / width <= hi * 1.1, seed


@pytest.mark.parametrize("kind", ["scratch", "crack"])
def test_hairlines_stay_visible_at_0_6(kind):
    for seed in range(3):
        rng = np.random.default_rng(seed)
        base = demo_data.brushed_metal(rng)
        img, mask = demo_data.add_defect(rng, base.copy(), kind)
        small, small_base = _shrink(img), _shrink(base)
        diff = np.abs(small - small_base).max(axis=-1)
        on_line = _shrink(mask.astype(np.float32)) >= 0.4  # (0.6 H, 0.6 W) pixels mostly covered by the line
        grey = small_base.mean(axis=-1)
        texture = (grey - cv2.GaussianBlur(grey, (0, 0), 3)).std()  # the surface's own fine variation, ~0.02
        assert np.median(diff[on_line]) > 4 * texture, seed
        assert (diff[on_line] > 2 * texture).mean() > 0.75, seed  # no long faint stretches


def test_same_seed_same_files_other_seed_differs(tmp_path):
    a = _files(make_demo_dataset(tmp_path / "a", **TINY))
    b = _files(make_demo_dataset(tmp_path / "b", **TINY))
    c = _files(make_demo_dataset(tmp_path / "c", **{**TINY, "seed": 1}))
    assert a == b
    name = next(k for k in a if k.suffix == ".png")
    assert a[name] != c[name]


def test_an_image_does_not_depend_on_the_counts():
    # Per-image generators: the 2nd training image is the same whether 2 or 120 are made.
    a = demo_data.brushed_metal(demo_data._image_rng(0, "train", "good", 1), (64, 256))
    b = demo_data.brushed_metal(demo_data._image_rng(0, "train", "good", 1), (64, 256))
    c = demo_data.brushed_metal(demo_data._image_rng(0, "train", "good", 2), (64, 256))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_second_call_does_not_regenerate(tiny, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("regenerated")

    monkeypatch.setattr(demo_data, "_write_all", fail)
    assert make_demo_dataset(tmp_path, **TINY) == tiny
    assert make_demo_dataset(tmp_path, **{**TINY, "shape": [64, 256]}) == tiny  # a list is the same shape


def test_incomplete_or_different_folder_is_regenerated(tiny, tmp_path):
    before = _files(tiny)
    (tiny / demo_data.MARKER).unlink()  # as if a run had been interrupted
    (tiny / "train" / "good" / "000.png").unlink()
    assert _files(make_demo_dataset(tmp_path, **TINY)) == before

    make_demo_dataset(tmp_path, **{**TINY, "n_train": 2})  # other parameters replace the cached copy
    assert len(list((tiny / "train" / "good").glob("*.png"))) == 2
    marker = json.loads((tiny / demo_data.MARKER).read_text())
    assert marker["n_train"] == 2 and marker["shape"] == [64, 256] and marker["version"] == demo_data.FORMAT_VERSION
