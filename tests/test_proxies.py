from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import stroke_width
from utils.images.reading import image_file_size
from utils.synthesis import proxies
from utils.synthesis.dataset_folder import MARKER

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"  # ../shared/data, next to the repository
MTD = DATA / "magnetic_tile" / "magnetic_tile"
MPDD = DATA / "mpdd_metal_plate" / "metal_plate"


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def _counts(class_dir):
    return {str(p.relative_to(class_dir)): len(_names(p)) for p in sorted(class_dir.glob("*/*")) if p.is_dir()}


def _check_cracks(class_dir, src):
    """Every test/crack image differs from its source crop exactly on its mask, darker, along a hairline."""
    for img_path in sorted((class_dir / "test" / "crack").glob("*.png")):
        stem, x = img_path.stem.rsplit("_x", 1)
        source = cv2.imread(str(src / "test" / "good" / f"{stem}.png"))[:, int(x):int(x) + proxies.CROP_W]
        img = cv2.imread(str(img_path))
        mask = cv2.imread(str(class_dir / "ground_truth" / "crack" / f"{img_path.stem}_mask.png"), cv2.IMREAD_UNCHANGED)
        assert set(np.unique(mask)) == {0, 255} and mask.shape == img.shape[:2] == source.shape[:2]
        changed = (img != source).any(axis=-1)
        assert np.array_equal(changed, mask > 0), img_path.name  # the mask is exactly the altered pixels
        on = mask > 0
        assert (img[on] <= source[on]).all()  # only darker
        ratio = img[on].sum(axis=-1) / np.maximum(source[on].sum(axis=-1), 1)
        assert 0.5 < np.median(ratio) < 0.9  # darkened by ~25-45 % at its core, less on the fringe
        width = stroke_width(on)
        assert 1.0 <= width <= 2.5, (img_path.name, width)  # a hairline, not a blob
        assert on.sum() / width >= 0.8 * proxies.CRACK_LENGTH[0]  # and a long one


# ---------------------------------------------------------------------------------------------- tiny fakes
def _fake_plate(rng, h=96, w=352):
    """A blue painted plate on a grey background, as in MPDD metal_plate, (h, w, 3) BGR uint8."""
    img = np.full((h, w, 3), 200, np.uint8)
    img[8:h - 8, 16:w - 16] = (170, 40, 20)
    return np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture
def fake_mpdd(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "src" / "metal_plate"
    for split, n in (("train/good", 2), ("test/good", 3), ("test/defect", 2)):
        (src / split).mkdir(parents=True)
        for i in range(n):
            cv2.imwrite(str(src / split / f"{i:03d}.png"), _fake_plate(rng))
    (src / "ground_truth" / "defect").mkdir(parents=True)
    for i, cx in enumerate((300, 40)):  # the crop follows the defect, clamped at the right and left edges
        mask = np.zeros((96, 352), np.uint8)
        cv2.circle(mask, (cx, 48), 10, 255, -1)
        cv2.imwrite(str(src / "ground_truth" / "defect" / f"{i:03d}_mask.png"), mask)
    return src


@pytest.fixture
def fake_mtd(tmp_path):
    src = tmp_path / "src" / "magnetic_tile"
    shapes = {"train/good": [(40, 100), (60, 60), (120, 30)], "test/good": [(50, 50), (30, 90)],
              "test/crack": [(40, 100), (70, 80)]}  # (h, w): aspect 2.5, 1, 4 | 1, 3 | 2.5, 1.1
    for split, sizes in shapes.items():
        (src / split).mkdir(parents=True)
        for i, (h, w) in enumerate(sizes):
            cv2.imwrite(str(src / split / f"{i}.jpg"), np.full((h, w), 100 + i, np.uint8))
            if split == "test/crack":
                (src / "ground_truth" / "crack").mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(src / "ground_truth" / "crack" / f"{i}_mask.png"), np.zeros((h, w), np.uint8))
    return src


def test_mpdd_tall_from_fakes(fake_mpdd, tmp_path):
    out = proxies.mpdd_tall(fake_mpdd, tmp_path / "out")
    assert out == tmp_path / "out" / "mpdd_tall"
    assert _counts(out) == {"ground_truth/crack": 3, "ground_truth/defect": 2, "test/crack": 3, "test/defect": 2,
                            "test/good": 3, "train/good": 6}
    assert _names(out / "train" / "good")[:3] == ["000_x000.png", "000_x096.png", "000_x192.png"]
    # crop 0 good and crop 2 cracked, the other way round for the next image: no crop is used twice
    assert _names(out / "test" / "good") == ["000_x000.png", "001_x192.png", "002_x000.png"]
    assert _names(out / "test" / "crack") == ["000_x192.png", "001_x000.png", "002_x192.png"]
    assert _names(out / "test" / "defect") == ["000_x192.png", "001_x000.png"]  # centred, then clamped
    for p in out.rglob("*.png"):
        img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        assert img.shape[:2] == (96, 160) and img.dtype == np.uint8, p
    mask = cv2.imread(str(out / "ground_truth" / "defect" / "000_x192_mask.png"), cv2.IMREAD_UNCHANGED)
    assert (mask > 0).sum() == (cv2.imread(str(fake_mpdd / "ground_truth/defect/000_mask.png"), 0) > 0).sum()
    _check_cracks(out, fake_mpdd)


def test_mpdd_tall_is_seeded_and_made_once(fake_mpdd, tmp_path, monkeypatch):
    def files(folder):
        return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*.png")}

    a = files(proxies.mpdd_tall(fake_mpdd, tmp_path / "a"))
    assert a == files(proxies.mpdd_tall(fake_mpdd, tmp_path / "b"))
    c = files(proxies.mpdd_tall(fake_mpdd, tmp_path / "c", seed=1))
    assert a.keys() == c.keys() and a != c  # other cracks, same crops

    def fail(*args):
        raise AssertionError("rebuilt")

    monkeypatch.setattr(proxies, "_write_mpdd_tall", fail)
    proxies.mpdd_tall(fake_mpdd, tmp_path / "a")  # complete, same parameters: reused
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["mpdd_tall"]  # no temp folders left


def test_no_room_for_a_crack_keeps_a_good_crop_only(tmp_path):
    src = tmp_path / "src"
    for split in ("train/good", "test/good"):
        (src / split).mkdir(parents=True)
        cv2.imwrite(str(src / split / "000.png"), np.full((96, 352, 3), 200, np.uint8))  # background only
    out = proxies.mpdd_tall(src, tmp_path / "out")
    assert _names(out / "test" / "good") == ["000_x000.png"] and not (out / "test" / "crack").exists()


def test_mtd_long_links_the_long_images_and_their_masks(fake_mtd, tmp_path):
    out = proxies.mtd_long(fake_mtd, tmp_path / "out")
    assert _names(out / "train" / "good") == ["0.jpg", "2.jpg"]
    assert _names(out / "test" / "good") == ["1.jpg"]
    assert _names(out / "test" / "crack") == ["0.jpg"]
    assert _names(out / "ground_truth" / "crack") == ["0_mask.png"]
    for p in out.rglob("*.*"):
        if p.name != MARKER:
            assert p.is_symlink() and p.resolve().is_relative_to(fake_mtd.resolve()), p
    assert (out / "ground_truth" / "crack" / "0_mask.png").resolve() == (fake_mtd / "ground_truth/crack/0_mask.png")
    everything = _counts(proxies.mtd_long(fake_mtd, tmp_path / "out2", min_aspect=1.0))
    assert everything == {"ground_truth/crack": 2, "test/crack": 2, "test/good": 2, "train/good": 3}


def test_command_line(fake_mtd, tmp_path, capsys):
    assert proxies.main(["mtd_long", "--src", str(fake_mtd), "--out", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "out" / "mtd_long")
    assert proxies.main(["mtd_long", "--src", str(tmp_path), "--out", str(tmp_path / "o")]) == 2  # not a class
    assert proxies.main(["mtd_long", "--src", str(fake_mtd), "--out", str(fake_mtd / "o")]) == 2  # inside --src
    inside_repo = Path(proxies.__file__).resolve().parents[2] / "proxies_here"
    assert proxies.main(["mpdd_tall", "--src", str(fake_mtd), "--out", str(inside_repo)]) == 2
    assert not inside_repo.exists() and "inside the repository" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        proxies.parse_args(["other", "--src", "a", "--out", "b"])


# ---------------------------------------------------------------------------------------------- real data
@pytest.fixture(scope="module")
def real_root(tmp_path_factory):
    if not MTD.is_dir() or not MPDD.is_dir():
        pytest.skip(f"{DATA} (MTD and MPDD metal_plate) not available")
    return tmp_path_factory.mktemp("proxies")


def test_mtd_long_from_the_real_data(real_root):
    out = proxies.mtd_long(MTD, real_root)
    counts = _counts(out)
    assert counts["train/good"] == 115 and counts["test/good"] == 26
    kinds = [k for k in _names(out / "test") if k != "good"]
    assert kinds == ["blowhole", "break", "crack", "fray", "uneven"]
    assert 100 <= sum(counts[f"test/{k}"] for k in kinds) <= 130
    for k in kinds:
        assert counts[f"ground_truth/{k}"] == counts[f"test/{k}"]
    for img in out.glob("t*/*/*.jpg"):
        w, h = image_file_size(img)
        assert max(w, h) / min(w, h) >= proxies.MIN_ASPECT and img.is_symlink()
        if img.parent.name != "good":
            mask = out / "ground_truth" / img.parent.name / f"{img.stem}_mask.png"
            assert mask.is_symlink() and image_file_size(mask) == (w, h)
    # and none left out: every long source image is there
    long_src = [p for p in (MTD / "train" / "good").glob("*.jpg") if proxies.aspect(p) >= proxies.MIN_ASPECT]
    assert len(long_src) == counts["train/good"]


def test_mpdd_tall_from_the_real_data(real_root):
    out = proxies.mpdd_tall(MPDD, real_root)
    counts = _counts(out)
    assert counts["train/good"] == 3 * 54 and counts["test/good"] == 26
    assert counts["test/crack"] == counts["ground_truth/crack"] >= 24  # a crack needs room on the plate
    assert 70 <= counts["test/defect"] == counts["ground_truth/defect"] <= 81
    for p in out.glob("test/*/*.png"):
        assert cv2.imread(str(p)).shape == (512, proxies.CROP_W, 3), p
    for p in (out / "ground_truth" / "defect").glob("*.png"):
        mask = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (512, proxies.CROP_W) and (mask > 0).any()
    good = {p.stem for p in (out / "test" / "good").glob("*.png")}
    assert not good & {p.stem for p in (out / "test" / "crack").glob("*.png")}  # no crop both good and cracked
    _check_cracks(out, MPDD)
