"""`--scale native` end to end: train.py on wide images, detect.py and evaluate.py on them (masks at native size),
and a brushed-metal strip whose 2-pixel scratch gets the stitched map's maximum."""
import json

import cv2
import numpy as np
import pytest
import torch

import detect
import evaluate
import train
from tests.conftest import write_images
from utils.inference.detector import Detector
from utils.storage.pairs import base_model_name, load_pair

WIDE = dict(height=160, width=640)
BASE = base_model_name(0.001, 1, 8, "wide")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These trainings run many tiny convolutions: one thread is as fast, and much faster on a busy machine
    (two threads on two shared cores were 10x slower here); the thread count is restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _wide_images(folder, n, seed):
    """n smooth random 640x160 PNGs."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        img = cv2.resize((rng.random((4, 16, 3)) * 255).astype(np.uint8), (WIDE["width"], WIDE["height"]),
                         interpolation=cv2.INTER_CUBIC)
        paths.append(folder / f"{i:03d}.png")
        cv2.imwrite(str(paths[-1]), img)
    return paths


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """A class of 640x160 images in MVTec layout (native-size masks) and a 1-epoch --scale native model."""
    root = tmp_path_factory.mktemp("wide")
    cls = root / "wide"
    _wide_images(cls / "train" / "good", 6, seed=0)
    _wide_images(cls / "test" / "good", 2, seed=1)
    (cls / "ground_truth" / "spot").mkdir(parents=True)
    for p in _wide_images(cls / "test" / "spot", 2, seed=2):
        img, mask = cv2.imread(str(p)), np.zeros((160, 640), np.uint8)
        cv2.circle(img, (500, 80), 6, (0, 0, 0), -1)
        cv2.circle(mask, (500, 80), 6, 255, -1)
        cv2.imwrite(str(p), img)
        cv2.imwrite(str(cls / "ground_truth" / "spot" / f"{p.stem}_mask.png"), mask)
    ckpt = root / "ckpt"
    assert train.main(["--data_path", str(cls), "--scale", "native", "--size", "64", "--rec_base_width", "4",
                       "--seg_base_width", "2", "--bs", "8", "--epochs", "1", "--lr", "0.001", "--amp", "off",
                       "--val_fraction", "0.34", "--checkpoint_path", str(ckpt), "--log_path",
                       str(root / "logs")]) == 0
    return root, cls, ckpt


def test_scale_is_stored_and_threshold_calibrated_on_whole_images(wide):
    _, _, ckpt = wide
    _, meta = load_pair(ckpt, BASE)
    assert meta["config"]["scale"] == "native" and meta["config"]["size"] == 64
    assert meta["calibration"]["n_normal"] == 3  # the 3 held-out images (the fewest the threshold uses), scored
    # whole (tiled), not crops


def test_prior_bank_from_tiles_and_the_whole_image_map_is_stitched_from_per_tile_novelty(wide):
    from utils.data_loader import list_images, split_files
    from utils.evaluation.thresholds import calibrate_threshold
    from utils.inference.detector import Detector
    root, cls, ckpt = wide
    _, meta = load_pair(ckpt, BASE)
    assert meta["prior"]["bank"].shape[1] == 152  # fitted on 64 px crops, the tiles detect.py scores
    detector = Detector.from_checkpoint(ckpt, BASE)
    image = detector.read(sorted((cls / "test" / "spot").iterdir())[0])
    amap = detector.predict([image])["anomaly_map"][0]
    assert amap.shape == (160, 640) and 0 <= float(amap.min()) and float(amap.max()) < 1
    held = split_files(list_images(cls / "train" / "good"), 0.34, 0)[1]  # the threshold: these scored whole
    again = calibrate_threshold(detector.score_files(held), 0.02)["threshold"]
    assert again == pytest.approx(detector.threshold, rel=1e-5, abs=1e-6)


def test_detect_json_and_a_wide_panel(wide, tmp_path, capsys):
    _, cls, ckpt = wide
    picture, image = tmp_path / "panel.png", cls / "test" / "spot" / "000.png"
    common = ["--base_model_name", BASE, "--checkpoint_path", str(ckpt), "--output_path", str(picture)]
    assert detect.main(["--image_path", str(image), *common, "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["file"] == str(image) and result["verdict"] in ("OK", "NG") and 0 <= result["score"] <= 1
    h, w = cv2.imread(str(picture)).shape[:2]
    assert h > w  # a 4:1 strip: the four panels stacked, each as wide as the picture at the image's aspect ratio


def test_detect_folder_mode(wide, tmp_path):
    _, cls, ckpt = wide
    out = tmp_path / "results"
    assert detect.main(["--image_path", str(cls / "test"), "--base_model_name", BASE, "--checkpoint_path",
                        str(ckpt), "--output_path", str(out)]) == 0
    assert len(list(out.rglob("*.png"))) == 4 and (out / "report.csv").is_file()


def test_evaluate_json_with_native_masks(wide, tmp_path, capsys):
    _, cls, ckpt = wide
    assert evaluate.main(["--data_path", str(cls), "--base_model_name", BASE, "--checkpoint_path", str(ckpt),
                          "--output_path", str(tmp_path / "eval"), "--json", "--save_images"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert all(0 <= last[k] <= 1 for k in ("image_auroc", "pixel_auroc", "pixel_ap", "aupro"))
    assert len(list((tmp_path / "eval" / "images").rglob("*.png"))) == 4


def test_images_of_different_sizes_and_smaller_than_a_tile(wide, tmp_path, capsys):
    """Magnetic-tile-like data: sizes differ, one image is smaller than a tile (padded, not stretched)."""
    _, _, ckpt = wide
    cls = tmp_path / "mixed"
    write_images(cls / "test" / "good", 1, size=48)
    _wide_images(cls / "test" / "good", 1, seed=4)
    for p in write_images(cls / "test" / "spot", 1, size=100, seed=3):
        (cls / "ground_truth" / "spot").mkdir(parents=True)
        mask = np.zeros((100, 100), np.uint8)
        mask[40:60, 40:60] = 255
        cv2.imwrite(str(cls / "ground_truth" / "spot" / f"{p.stem}_mask.png"), mask)
    assert evaluate.main(["--data_path", str(cls), "--base_model_name", BASE, "--checkpoint_path", str(ckpt),
                          "--output_path", str(tmp_path / "eval"), "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out.strip().splitlines()[-1])) >= {"pixel_auroc", "aupro"}


def brushed_metal(rng, height=128, width=1024):
    """A grey strip with horizontal grain (per-row brightness, noise smeared along x) and slow shading."""
    rows = rng.normal(0, 1, (height, 1)) * 0.04
    grain = cv2.GaussianBlur(rng.normal(0, 1, (height, width)).astype(np.float32), (0, 0), sigmaX=12,
                             sigmaY=0.6) * 0.25
    shading = 0.05 * np.sin(2 * np.pi * np.linspace(0, 1, width))[None]
    return np.clip(0.55 + rows + grain + shading, 0, 1).astype(np.float32)


def test_stitched_map_finds_a_2_pixel_scratch_on_a_wide_strip(tmp_path):
    """Item 7: trained ~100 steps of 64 px crops on two 1024x128 good strips, the stitched map's maximum lies on
    a 2-pixel scratch across the grain (within the scratch's 2-pixel neighbourhood)."""
    rng = np.random.default_rng(0)
    good = tmp_path / "strip" / "train" / "good"
    good.mkdir(parents=True)
    for i in range(2):
        cv2.imwrite(str(good / f"{i}.png"), (brushed_metal(rng) * 255).astype(np.uint8))
    test, mask = brushed_metal(rng), np.zeros((128, 1024), np.uint8)
    cv2.line(mask, (600, 20), (640, 100), 255, 2)
    test[mask > 0] = 0.15
    cv2.imwrite(str(tmp_path / "scratch.png"), (test * 255).astype(np.uint8))
    assert train.main(["--data_path", str(tmp_path / "strip"), "--scale", "native", "--size", "64",
                       "--rec_base_width", "4", "--seg_base_width", "4", "--bs", "8", "--epochs", "12", "--lr",
                       "0.001", "--amp", "off", "--val_fraction", "0", "--checkpoint_path", str(tmp_path / "ck"),
                       "--log_path", str(tmp_path / "logs")]) == 0
    det = Detector.from_checkpoint(tmp_path / "ck", base_model_name(0.001, 12, 8, "strip"), torch.device("cpu"))
    amap = det.predict([det.read(tmp_path / "scratch.png")], with_reconstruction=False)["anomaly_map"][0]
    assert amap.shape == (128, 1024)
    y, x = np.unravel_index(int(amap.argmax()), amap.shape)
    assert cv2.dilate(mask, np.ones((5, 5), np.uint8))[y, x] > 0, (y, x)


def test_onnx_of_a_native_pair_takes_its_working_shape(wide, tmp_path):
    """Its prior sees whole images: the graph is exported for the image's working shape and checked against
    PyTorch by the export itself."""
    pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    from utils.inference.export import export_onnx
    _, cls, ckpt = wide
    det = Detector.from_checkpoint(ckpt, BASE, torch.device("cpu"))
    image = det.read(cls / "test" / "spot" / "000.png")  # (3, 160, 640)
    result = export_onnx(det, tmp_path / "whole.onnx", shape=tuple(image.shape[1:]))
    assert result["checked"]
    session = onnxruntime.InferenceSession(str(tmp_path / "whole.onnx"), providers=["CPUExecutionProvider"])
    amap, score = session.run(["anomaly_map", "score"], {"image": image[None].numpy()})
    want = det.predict([image], with_reconstruction=False)  # detect.py tiles DRAEM; the graph runs it whole
    assert amap.shape == (1, 160, 640) and abs(float(score[0]) - float(want["score"][0])) < 0.1


def test_onnx_tile_model_of_a_pair_with_a_per_tile_prior(wide, tmp_path):
    """Pairs from before the aspect-kept prior (square prior per tile, --scale native): the graph takes one tile and
    onnx_predict_tiled stitches as detect.py does."""
    pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    from model.feature_prior import FeaturePrior
    from utils.inference.export import TOLERANCE, export_onnx, onnx_predict_tiled
    _, cls, ckpt = wide
    det = Detector.from_checkpoint(ckpt, BASE, torch.device("cpu"))
    old = det.scorer.prior.features
    det.scorer.prior.features = FeaturePrior(old.bank[:500], old.size, old.backbone)  # no side: per tile
    det.scorer.prior.fine = None  # nor the fine evidence, which only pairs with a side fit
    export_onnx(det, tmp_path / "tile.onnx")
    image = det.read(cls / "test" / "spot" / "000.png")  # (3, 160, 640)
    session = onnxruntime.InferenceSession(str(tmp_path / "tile.onnx"), providers=["CPUExecutionProvider"])
    amap, score = onnx_predict_tiled(session, image, det.size, det.scorer.kernel, top_fraction=det.scorer.top_fraction,
                                     guide=det.scorer.guide)
    want = det.predict([image], with_reconstruction=False)
    # float32 sums in another order (ONNX Runtime vs PyTorch kernels), times the tail tables' slopes
    assert amap.shape == (160, 640) and (amap - want["anomaly_map"][0]).abs().max() < TOLERANCE
    assert abs(float(score) - float(want["score"][0])) < TOLERANCE


def test_native_resume_gives_the_same_weights_as_uninterrupted(tmp_path):
    """Crops are drawn per epoch from (seed, epoch): a resumed run trains on the same crops, bit for bit."""
    data = tmp_path / "good"
    rng = np.random.default_rng(0)
    data.mkdir()
    for i, (h, w) in enumerate([(40, 120)] * 5 + [(20, 50)]):  # the last one is smaller than a tile
        cv2.imwrite(str(data / f"{i}.png"), cv2.resize((rng.random((3, 5, 3)) * 255).astype(np.uint8), (w, h)))
    tiny = ["--data_path", str(data), "--scale", "native", "--size", "32", "--rec_base_width", "4",
            "--seg_base_width", "2", "--bs", "4", "--amp", "off", "--epochs", "3"]
    for run, extra in (("a", []), ("b", ["--stop_after_epoch", "1"]), ("b", ["--resume"])):
        assert train.main([*tiny, *extra, "--checkpoint_path", str(tmp_path / run / "ck"),
                           "--log_path", str(tmp_path / run / "logs")]) == 0
    base = base_model_name(0.0001, 3, 4, "good") + "last"
    for run_a, run_b in zip(*(sorted((tmp_path / r / "ck").glob(f"{base}*.pt")) for r in "ab")):
        sa, sb = (torch.load(p, weights_only=True)["state_dict"] for p in (run_a, run_b))
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
