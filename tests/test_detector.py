"""utils/images/tiles.py and utils/inference/detector.py: the tile grid and the stitching (tested exactly), the one predict path, the README's
"Python API" block run as written, and Detector.score on batches."""
import argparse
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from model import DRAEM
from model.model_unet import Scorer, image_score
from utils.cli import scale_arg
from utils.images.reading import image_to_tensor, scale_of, working_shape
from utils.images.tiles import blend_window, count_tiles, pad_to_tile, predict, stitch, tile_grid, tile_starts
from utils.inference.detector import Detector
from utils.storage.pairs import save_pair


def test_scale_arg_and_checkpoint_default():
    assert scale_arg("square") == "square" and scale_arg("native") == "native" and scale_arg("512") == 512
    for bad in ("big", "16", "-3"):
        with pytest.raises(argparse.ArgumentTypeError):
            scale_arg(bad)
    assert scale_of({"size": 256}) == "square"  # checkpoints from before --scale, and the authors' .pckl
    assert scale_of({"scale": "native"}) == "native" and scale_of({"scale": 640}) == 640


def test_working_shape():
    assert working_shape(460, 1130, "square", 128) == (128, 128)
    assert working_shape(460, 1130, "native", 128) == (460, 1130)
    assert working_shape(460, 1130, 565, 128) == (230, 565)  # longer side N, aspect kept
    assert working_shape(2000, 500, 400, 128) == (400, 100)
    image = np.random.default_rng(0).integers(0, 255, (460, 1130, 3), np.uint8)
    assert image_to_tensor(image, 128, scale=565).shape == (3, 230, 565)
    assert image_to_tensor(image, 128).shape == (3, 128, 128) and image_to_tensor(image).shape == (3, 460, 1130)


@pytest.mark.parametrize("length,tile,overlap", [(64, 64, 16), (65, 64, 16), (300, 64, 16), (1024, 128, 32),
                                                 (97, 32, 8)])
def test_tile_starts_cover_with_overlap(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    assert starts[0] == 0 and starts[-1] + tile == length
    gaps = np.diff(starts)
    assert (gaps > 0).all() and (tile - gaps >= overlap).all()  # every seam overlaps by >= overlap pixels


def test_blend_window_is_positive_smooth_and_symmetric():
    w = blend_window(64, 16)
    assert (w > 0).all() and w.max() == 1 and torch.allclose(w, w.flip(0))
    assert (w[16:48] == 1).all() and (w.diff()[:16] > 0).all()


def test_constant_map_stays_constant_across_seams():
    image = torch.rand(3, 150, 410)
    out = stitch(image, lambda t: (torch.full(t.shape[:1] + t.shape[2:], 0.37), None), tile=64)
    assert out["anomaly_map"].shape == (150, 410)
    assert torch.allclose(out["anomaly_map"], torch.tensor(0.37), atol=1e-6, rtol=0)


def test_position_independent_output_is_reproduced_without_seams():
    """A per-pixel 'network' on a smooth image: the stitched map and reconstruction equal the direct ones."""
    y, x = torch.meshgrid(torch.linspace(0, 3, 173), torch.linspace(0, 7, 530), indexing="ij")
    image = torch.stack([torch.sin(x + y), torch.cos(x * y / 4), x / 7]) * 0.5 + 0.5  # (3, 173, 530)
    out = stitch(image, lambda t: (t.mean(1) ** 2, 1 - t), tile=64, overlap=20, tile_batch=5,
                 with_reconstruction=True)
    assert torch.allclose(out["anomaly_map"], image.mean(0) ** 2, atol=1e-6)
    assert torch.allclose(out["reconstruction"], 1 - image, atol=1e-6)


def test_blend_has_no_step_between_disagreeing_tiles():
    """Tiles that disagree (alternately 0 and 1): the cosine window turns the jump into a ramp over the overlap,
    so neighbouring pixels differ by at most ~pi / (2 * overlap) instead of a step."""
    calls = []

    def alternating(tiles):
        values = torch.tensor([float((len(calls) + j) % 2) for j in range(len(tiles))])
        calls.extend(range(len(tiles)))
        return values[:, None, None].expand(-1, 64, 64), None
    amap = stitch(torch.rand(3, 64, 400), alternating, tile=64, overlap=16, tile_batch=1)["anomaly_map"]
    assert amap.max() > 0.9 and amap.min() < 0.1
    assert amap.diff(dim=1).abs().max() < np.pi / (2 * 16) + 1e-3


def test_tile_batch_bounds_the_work_per_call():
    sizes = []

    def record(tiles):
        sizes.append(len(tiles))
        return tiles[:, 0], None
    stitch(torch.rand(3, 200, 900), record, tile=64, tile_batch=7)
    assert max(sizes) <= 7 and sum(sizes) == count_tiles(200, 900, 64) == len(tile_grid(200, 900, 64, 16))


def test_small_images_are_padded_by_reflection_not_stretched():
    image = torch.arange(2 * 10 * 20, dtype=torch.float32).reshape(2, 10, 20)
    padded = pad_to_tile(image, 32)
    assert padded.shape == (2, 32, 32) and torch.equal(padded[:, :10, :20], image)
    assert torch.equal(padded[:, 10, :20], image[:, 8])  # reflection about the last row
    assert pad_to_tile(torch.zeros(3, 1, 5, dtype=torch.uint8), 8).shape == (3, 8, 8)
    out = stitch(torch.rand(3, 20, 50), lambda t: (t[:, 0], None), tile=32)
    assert out["anomaly_map"].shape == (20, 50)


def test_a_square_image_is_one_tile_and_gives_the_network_output_exactly():
    torch.manual_seed(0)
    scorer = Scorer(DRAEM(4, 2), kernel=11).eval()
    images = torch.rand(3, 3, 64, 64)
    out = predict(scorer, list(images), 64, torch.device("cpu"))
    with torch.inference_mode():
        rec, amap = scorer(images)
    assert torch.equal(torch.stack(out["anomaly_map"]), amap) and torch.equal(torch.stack(out["reconstruction"]), rec)
    assert torch.equal(torch.stack(out["score"]), scorer.score(amap))


def test_detector_reads_and_scores_at_the_stored_scale(tmp_path):
    import cv2
    cv2.imwrite(str(tmp_path / "wide.png"), np.random.default_rng(0).integers(0, 255, (90, 300, 3), np.uint8))
    model = DRAEM(4, 2)
    meta = {"config": {"size": 64, "scale": "native", "score_kernel": 5}, "calibration": {"threshold": 0.5}}
    det = Detector(model, meta, torch.device("cpu"))
    image = det.read(tmp_path / "wide.png")
    assert image.shape == (3, 90, 300)
    out = det.predict([image, image[:, :70, :100]], with_reconstruction=False)
    assert [m.shape for m in out["anomaly_map"]] == [(90, 300), (70, 100)] and out["reconstruction"] == [None] * 2
    assert float(out["score"][0]) == pytest.approx(float(image_score(out["anomaly_map"][0][None], 5)[0]))
    det.scale = 150
    assert det.read(tmp_path / "wide.png").shape == (3, 45, 150)


def test_python_api_scores_numpy_images_at_the_stored_scale():
    model = DRAEM(4, 2)
    meta = {"config": {"size": 64, "scale": "native", "score_kernel": 5}, "calibration": {"threshold": 0.5}}
    det = Detector(model, meta, torch.device("cpu"))
    rng = np.random.default_rng(0)
    out = det.score([rng.integers(0, 255, (90, 300, 3), np.uint8), rng.random((40, 50))])
    assert [m.shape for m in out["anomaly_map"]] == [(90, 300), (40, 50)] and out["score"].shape == (2,)
    assert out["verdict"] in (["OK", "OK"], ["OK", "NG"], ["NG", "OK"], ["NG", "NG"])


README = Path(__file__).resolve().parents[1] / "README.md"
BASE = "DRAEM_test_0.0001_20_bs8_coil_"  # the name the README's block loads


def readme_block():
    text = README.read_text()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture
def pair(tmp_path):
    torch.manual_seed(0)
    config = {"size": 32, "rec_base_width": 4, "seg_base_width": 2, "in_channels": 3, "grayscale": False}
    save_pair(DRAEM(4, 2).init_weights().eval(), tmp_path / "checkpoints", BASE, config,
              {"threshold": 0.5, "rule": "test"}, "test-s1")
    return tmp_path


def test_readme_python_api_block_runs_as_written(pair, monkeypatch):
    monkeypatch.chdir(pair)
    cv2.imwrite("part.png", np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    names = {}
    exec(readme_block(), names)  # the README's own lines, unchanged
    assert isinstance(names["score"], np.floating) and 0 <= names["score"] <= 1
    assert names["verdict"] in ("OK", "NG")
    assert names["anomaly_map"].shape == (32, 32) and names["anomaly_map"].dtype == np.float32


def test_score_single_batch_and_grey_agree_with_the_tensor_path(pair):
    detector = Detector.from_checkpoint(pair / "checkpoints", BASE)
    rgb = np.random.default_rng(1).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    one = detector.score(rgb)
    batch = detector.score(np.stack([rgb, rgb[::-1]]))
    assert one["score"].shape == (1,) and batch["score"].shape == (2,) and len(batch["verdict"]) == 2
    assert np.allclose(one["score"][0], batch["score"][0], atol=1e-6)
    tensor = torch.from_numpy(cv2.resize(rgb, (32, 32), interpolation=cv2.INTER_AREA)).permute(2, 0, 1)[None] / 255
    assert np.allclose(float(detector.predict(list(tensor.float()))["score"][0]), one["score"], atol=1e-6)
    assert detector.score(rgb[..., 0])["anomaly_map"][0].shape == (32, 32)  # grey (H, W)
    with pytest.raises(ValueError, match="shape"):
        detector.score(np.zeros((2, 4, 4, 7)))  # 7 channels


def test_the_picture_says_when_the_reconstruction_is_not_learnt_yet():
    """Detector.reconstruction_note: from the R² the pair's calibration records (held-out good images)."""
    from types import SimpleNamespace
    from utils.inference.detector import Detector
    note = lambda r2: Detector.reconstruction_note.fget(SimpleNamespace(meta={"calibration": {"val_rec_r2": r2}}))  # noqa: E731
    assert note(-105.9) == "not learnt yet: R² -106 on held-out good images"
    assert note(-0.33) == "not learnt yet: R² -0.33 on held-out good images"
    assert note(0.28) == "still rough: R² 0.28 on held-out good images"
    assert note(0.93) is None and note(float("nan")) is None
    assert Detector.reconstruction_note.fget(SimpleNamespace(meta={"calibration": {}})) is None  # the authors'
