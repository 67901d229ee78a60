"""utils/data_loader.py: reading (utils/images/reading.py, the one way in), working scale, class folders, split,
datasets and training crops."""
import ast
import os

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from tests.conftest import ROOT, shared_path, write_images
from utils.images import reading
from utils.data_loader import (MVTecTestDataset, RandomCrops, crops_per_image, is_grayscale, list_images, load_images,
                               load_images_at_scale, resolve_classes, split_files, validation_crops)
from utils.images.reading import read_file_bytes, read_image


def test_reads_16bit_gray_rgba_bmp_tif_any_size(tmp_path):
    g16 = (np.linspace(0, 65535, 40 * 30).reshape(30, 40)).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "g16.png"), g16)
    cv2.imwrite(str(tmp_path / "g16.tif"), g16)
    rgba = np.zeros((20, 50, 4), np.uint8)
    rgba[..., 2] = 255  # red in BGRA
    rgba[..., 3] = 7    # alpha must be dropped, not treated as a colour
    cv2.imwrite(str(tmp_path / "rgba.png"), rgba)
    cv2.imwrite(str(tmp_path / "c.bmp"), np.full((17, 23, 3), 128, np.uint8))
    cv2.imwrite(str(tmp_path / "c.JPG"), np.full((17, 23, 3), 128, np.uint8))
    for name in ("g16.png", "g16.tif"):
        x = read_image(tmp_path / name)
        assert x.shape == (3, 30, 40) and x.dtype == torch.float32
        assert x.max().item() == pytest.approx(1.0) and x.min().item() == 0.0
        assert is_grayscale(x)
    red = read_image(tmp_path / "rgba.png", size=32)
    assert red.shape == (3, 32, 32)
    assert torch.allclose(red[0], torch.ones(32, 32)) and red[1:].abs().max() == 0
    assert read_image(tmp_path / "c.bmp", 64).shape == (3, 64, 64)
    assert len(list_images(tmp_path)) == 5


def test_unreadable_file_error_names_it(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="broken.png"):
        read_image(bad)


def test_the_reader_refuses_special_files_before_opening_them(tmp_path, monkeypatch):
    if not hasattr(os, "mkfifo") or not os.path.exists("/dev/zero"):
        pytest.skip("no FIFOs or no /dev/zero on this system")
    os.mkfifo(tmp_path / "pipe.png")  # no writer: opening it for a plain read would wait forever
    (tmp_path / "zero.png").symlink_to("/dev/zero")  # reading it would never end
    cases = (("pipe.png", "a FIFO"), ("zero.png", "a character device"))
    for name, kind in cases:
        with pytest.raises(ValueError, match=rf"{name}: {kind}, not an image file \(not opened\)"):
            read_file_bytes(tmp_path / name)
    # swapped for a special file between the look and the open: opened without waiting, refused unread
    monkeypatch.setattr(reading, "special_file_kind", lambda path: None)
    for name, kind in cases:
        with pytest.raises(ValueError, match=rf"{kind}, not an image file \(not read\)"):
            read_file_bytes(tmp_path / name)
    assert read_file_bytes(write_images(tmp_path, 1)[0])[:4] == b"\x89PNG"


# calls that read a file's bytes or decode an image file; only the reader makes them
BYTE_READERS = {"imread", "imreadmulti", "imdecode", "fromfile", "read_bytes"}
NOT_IMAGES = {("utils/training_logger.py", "read_bytes")}  # command.txt: the run folder's own text file


def test_every_image_file_is_opened_by_the_one_reader():
    """No module but utils/images/reading.py reads a file's bytes or decodes an image itself (cv2.imread, np.fromfile,
    Path.read_bytes, PIL's Image.open ...): every image read passes `read_file_bytes`, so its refusal of special files
    holds everywhere. A new way in fails here."""
    sources = [*ROOT.glob("*.py"), *(ROOT / "model").rglob("*.py"), *(ROOT / "utils").rglob("*.py")]
    found = set()
    for path in sources:
        name = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            call = node.func if isinstance(node, ast.Call) else None
            if isinstance(call, ast.Attribute) and (call.attr in BYTE_READERS or (
                    call.attr == "open" and isinstance(call.value, ast.Name) and call.value.id == "Image")):
                found.add((name, call.attr))
    assert found - NOT_IMAGES == {("utils/images/reading.py", "imdecode"), ("utils/images/reading.py", "open")}


def test_load_images_skips_unreadable_and_split_keeps_two_for_training(tmp_path, caplog):
    files = write_images(tmp_path / "good", 3) + [tmp_path / "good" / "zz_broken.jpg"]
    files[-1].write_bytes(b"\x00" * 10)
    images = load_images(files, 32, workers=0)
    assert images.shape == (3, 3, 32, 32) and images.dtype == torch.uint8 and "zz_broken.jpg" in caplog.text
    assert load_images([], 32, workers=0).shape == (0, 3, 32, 32)
    train, val = split_files(files, 0.5, seed=0)
    assert len(train) == 2 and len(val) == 2 and sorted(train + val) == sorted(files)


def test_resolve_classes_layouts(tmp_path):
    write_images(tmp_path / "root" / "a" / "train" / "good", 1)
    write_images(tmp_path / "flat", 1)
    assert resolve_classes(tmp_path / "root" / "a" / "train" / "good", -1)[0][0] == "a"
    assert resolve_classes(tmp_path / "root" / "a", -1)[0][0] == "a"
    assert [c for c, _ in resolve_classes(tmp_path / "root", -1)] == ["a"]
    assert resolve_classes(tmp_path / "flat", -1) == [("flat", tmp_path / "flat")]


def test_mvtec_test_dataset_masks_and_labels(tmp_path):
    cls = tmp_path / "widget"
    write_images(cls / "test" / "good", 2)
    write_images(cls / "test" / "scratch", 2, seed=1)
    (cls / "ground_truth" / "scratch").mkdir(parents=True)
    for i in range(2):
        m = np.zeros((48, 48), np.uint8)
        m[10:20, 10:20] = 255
        cv2.imwrite(str(cls / "ground_truth" / "scratch" / f"{i:03d}_mask.png"), m)
    ds = MVTecTestDataset(cls, 32)
    assert len(ds) == 4
    items = [ds[i] for i in range(4)]
    assert [it["label"] for it in items] == [0, 0, 1, 1]
    assert items[0]["mask"].sum() == 0 and items[2]["mask"].sum() > 0
    assert set(items[2]["mask"].unique().tolist()) == {0.0, 1.0}


def test_real_magnetic_tile_images_load():
    folder = shared_path("data", "magnetic_tile", "magnetic_tile", "train", "good")
    files = list_images(folder)[:3]
    x = torch.stack([read_image(f, 64) for f in files])
    assert x.shape == (3, 3, 64, 64) and is_grayscale(x)


def test_held_out_split_takes_enough_images_for_the_threshold():
    for n, held_out in ((12, 4), (54, 18), (90, 30), (761, 76)):
        files = [f"{i:04d}.png" for i in range(n)]
        train_files, val = split_files(files, 0.1, 0)
        assert len(val) == held_out and sorted(train_files + val) == files
    assert split_files(files, 0.0, 0)[1] == []


def test_load_images_at_scale(tmp_path):
    rng = np.random.default_rng(0)
    cv2.imwrite(str(tmp_path / "a.png"), rng.integers(0, 255, (160, 640, 3), np.uint8))
    (tmp_path / "b.png").write_bytes(b"not an image")
    files = [tmp_path / "a.png", tmp_path / "b.png"]
    native = load_images_at_scale(files, 64, 0, "native")
    assert [im.shape for im in native] == [(3, 160, 640)] and native[0].dtype == torch.uint8  # b.png skipped
    assert [im.shape for im in load_images_at_scale(files, 64, 0, 320)] == [(3, 80, 320)]


def _images():
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
            for shape in ((3, 160, 640), (3, 100, 90), (3, 40, 300))]


def test_crops_are_seeded_per_epoch_and_cover_each_image_by_area():
    images = _images()
    ds = RandomCrops(images, 64, seed=3)
    assert [crops_per_image(im, 64) for im in ds.images] == [25, 2, 5]  # the 40 px image is padded to 64
    assert len(ds) == 32 and all(ds[k][0].shape == (3, 64, 64) and ds[k][0].dtype == torch.uint8
                                 for k in range(len(ds)))
    again = RandomCrops(images, 64, seed=3)
    assert all(torch.equal(ds[k][0], again[k][0]) for k in range(len(ds)))  # same seed, same crops
    first = torch.stack([ds[k][0] for k in range(len(ds))])
    ds.set_epoch(1)
    assert not torch.equal(first, torch.stack([ds[k][0] for k in range(len(ds))]))  # a new epoch, new crops
    ds.set_epoch(0)  # a resumed run at epoch 0 sees epoch 0's crops again
    assert torch.equal(first, torch.stack([ds[k][0] for k in range(len(ds))]))


def test_crops_are_taken_from_the_image():
    image = torch.arange(100 * 200, dtype=torch.int32).reshape(1, 100, 200).expand(3, -1, -1)
    ds = RandomCrops([image], 32, seed=0)
    for k in range(len(ds)):
        crop = ds[k][0][0]
        y, x = divmod(int(crop[0, 0]), 200)
        assert torch.equal(crop, image[0, y:y + 32, x:x + 32])


def test_loader_batches_crops_like_a_tensor_dataset():
    loader = DataLoader(RandomCrops(_images(), 32, seed=0), batch_size=4, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    (batch,) = next(iter(loader))
    assert batch.shape == (4, 3, 32, 32) and batch.dtype == torch.uint8


def test_validation_crops_fixed_and_capped():
    images = _images()
    a, b = validation_crops(images, 64, seed=1234), validation_crops(images, 64, seed=1234)
    assert a.shape == (4 + 2 + 4, 3, 64, 64) and torch.equal(a, b)
    assert validation_crops([], 64, seed=0).shape == (0, 3, 64, 64)
