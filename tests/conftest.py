"""Shared fixtures: tiny generated image folders, and the path to ../shared when it exists."""
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared"


def write_images(folder, n, size=48, seed=0, gray=False):
    """n small smooth random images (so they compress) as PNG; returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        base = rng.random((6, 6, 1 if gray else 3))
        img = cv2.resize((base * 255).astype(np.uint8), (size, size), interpolation=cv2.INTER_CUBIC)
        p = folder / f"{i:03d}.png"
        cv2.imwrite(str(p), img)
        paths.append(p)
    return paths


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


def random_images(b=4, h=32, w=32, seed=0):
    """(b, 3, h, w) uniform noise in [0, 1), seeded."""
    return torch.rand(b, 3, h, w, generator=generator(seed))


def grey_images(b=4, h=32, w=32):
    """(b, 3, h, w) with three equal channels."""
    return random_images(b, h, w)[:, :1].expand(-1, 3, -1, -1).contiguous()


@pytest.fixture
def image_folder(tmp_path):
    folder = tmp_path / "good"
    write_images(folder, 12)
    return folder


def shared_path(*parts):
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} not available")
    return p


def stroke_width(mask):
    """Mean width in pixels of the thin strokes in a bool mask (H, W): area / length, the length being half the
    contours' perimeter (a stroke's outline runs along both of its sides)."""
    m = mask.astype(np.uint8)
    contours, _ = cv2.findContours(m, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    length = sum(cv2.arcLength(c, closed=True) for c in contours) / 2
    return m.sum() / max(length, 1.0)


WIDGET_PAIR = "DRAEM_test_0.001_1_bs4_widget_"  # utils.storage.pairs.base_model_name(0.001, 1, 4, "widget")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A widget class in MVTec layout (train, test/good, test/spot with masks) and a 1-epoch model."""
    root = tmp_path_factory.mktemp("detect")
    cls = root / "widget"
    write_images(cls / "train" / "good", 10, size=64)
    write_images(cls / "test" / "good", 3, size=64, seed=5)
    spots = write_images(cls / "test" / "spot", 3, size=64, seed=6)
    (cls / "ground_truth" / "spot").mkdir(parents=True)
    for p in spots:
        img = cv2.imread(str(p))
        cv2.circle(img, (30, 30), 8, (0, 0, 0), -1)
        cv2.imwrite(str(p), img)
        mask = np.zeros((64, 64), np.uint8)
        cv2.circle(mask, (30, 30), 8, 255, -1)
        cv2.imwrite(str(cls / "ground_truth" / "spot" / f"{p.stem}_mask.png"), mask)
    ckpt = root / "ckpt"
    import train  # a script: imported only where this fixture runs
    assert train.main(["--data_path", str(cls), "--checkpoint_path", str(ckpt), "--log_path", str(root / "logs"),
                       "--size", "64", "--rec_base_width", "4", "--seg_base_width", "2", "--bs", "4",
                       "--epochs", "1", "--lr", "0.001", "--amp", "off"]) == 0
    return root, cls, ckpt
