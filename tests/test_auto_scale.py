"""The default working shape, `--scale auto`: no image is squashed. One zoom for every image, from the training
images' median area (utils/images/reading.py `auto_zoom`), and the feature prior sees each whole working image at
its own aspect (model/feature_prior.py `FeaturePrior.input_shape`)."""
import cv2
import numpy as np
import pytest
import torch

import train
from model.feature_prior import MAX_ASPECT, FeaturePrior
from utils.config import Config
from utils.images.reading import auto_zoom, working_shape
from utils.inference.detector import Detector
from utils.storage.pairs import base_model_name, load_pair


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_auto_zoom_from_the_median_area_and_shorter_side():
    z = lambda sizes: auto_zoom(sizes, 128)  # noqa: E731 - the cpu preset's crop size
    assert z([(512, 512)]) == pytest.approx(192 / 512)  # a square plate: about 192^2 pixels
    assert z([(1024, 256)]) == pytest.approx(160 / 256)  # a strip keeps 160 px across: 640 x 160
    assert z([(160, 512)]) == 1.0  # a tall part 160 px across: its own pixels, never zoomed up for its width
    assert z([(64, 64)]) == pytest.approx(3.0)  # small: brought up to 192^2
    assert z([(1, 4000)]) == pytest.approx(192 / 4000 ** 0.5)  # a 1-pixel line: its area
    # the medians decide, one zoom for all: a single huge image among small ones changes nothing
    assert z([(300, 300)] * 4 + [(5000, 5000)]) == pytest.approx(0.64)


@pytest.mark.parametrize("height,width", [(1260, 500), (500, 1260), (256, 1024), (4000, 40), (300, 330), (512, 512)])
def test_both_halves_keep_the_aspect_ratio(height, width):
    zoom = auto_zoom([(width, height)], 128, Config.auto_sides)
    h, w = working_shape(height, width, zoom, 128)  # DRAEM's working image
    assert abs(w / h - width / height) <= width / height * (1 / h + 1 / w)  # one pixel's rounding
    prior = FeaturePrior(torch.zeros(0, 152), backbone=torch.nn.Identity(), side=Config.prior_side,
                         area=Config.prior_area)
    ph, pw = prior.input_shape(h, w)
    assert ph % 16 == 0 and pw % 16 == 0
    if max(h, w) / min(h, w) <= MAX_ASPECT:  # the prior's input: the aspect to within its rounding to 16 px
        assert abs(pw / ph - w / h) <= (w / h) * (16 / ph + 16 / pw) and min(ph, pw) >= 128
    else:  # a longer strip: its longer side at MAX_ASPECT x 128, the shorter one less
        assert max(ph, pw) == MAX_ASPECT * 128
    if (height, width) == (512, 512):
        assert (h, w) == (ph, pw) == (192, 192)  # a square part: what --scale square shows the prior


def _tall_folder(folder, n, seed=0):
    """n grey-ish 1260 x 500 (H x W) images with vertical grain, like the tall cracked parts of the issue."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        grain = cv2.resize(rng.random((40, 8)).astype(np.float32), (500, 1260), interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(folder / f"{i:02d}.png"), (np.clip(0.3 + 0.4 * grain, 0, 1) * 255).astype(np.uint8))


def test_train_on_a_500x1260_folder_never_squashes(tmp_path):
    """python train.py --data_path X at the default scale: both halves at the images' own aspect ratio, recorded
    in the pair; detect reads an image as training did."""
    data = tmp_path / "tall"
    _tall_folder(data, 8)
    ckpt = tmp_path / "ckpt"
    assert train.main(["--data_path", str(data), "--size", "32", "--rec_base_width", "4", "--seg_base_width", "2",
                       "--bs", "4", "--epochs", "1", "--amp", "off", "--val_fraction", "0.4", "--checkpoint_path",
                       str(ckpt), "--log_path", str(tmp_path / "logs")]) == 0
    base = base_model_name(0.0001, 1, 4, "tall")
    _, meta = load_pair(ckpt, base)
    assert meta["config"]["scale"] == "auto" and 0 < meta["config"]["scale_factor"] < 1
    detector = Detector.from_checkpoint(ckpt, base)
    image = detector.read(data / "00.png")  # (3, H, W) at the working scale
    h, w = image.shape[1:]
    assert h > 2 * 32 and abs(h / w - 1260 / 500) < 1260 / 500 * (1 / h + 1 / w)
    ph, pw = detector.scorer.prior.features.input_shape(h, w)
    assert abs(ph / pw - h / w) <= (h / w) * (16 / ph + 16 / pw)  # the prior too, to within its rounding
    out = detector.predict([image])
    assert out["anomaly_map"][0].shape == (h, w) and out["reconstruction"][0].shape == (3, h, w)
