"""utils/inference.py: the README's "Python API" block, run as written, and Detector.score on batches."""
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from model import DRAEM
from utils.checkpoint import save_pair
from utils.detector import Detector

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
