"""utils/textures.py: procedural textures and the texture bank."""
import logging

import cv2
import numpy as np
import pytest
import torch

from tests.conftest import generator
from utils.synthesis.textures import load_texture_bank, procedural_textures


def test_procedural_textures():
    tex = procedural_textures(12, 24, 40, generator())
    assert tex.shape == (12, 3, 24, 40) and tex.min() >= 0 and tex.max() <= 1
    assert tex.flatten(1).std(dim=1).min() > 0  # patterns, not flat colours
    assert torch.equal(tex, procedural_textures(12, 24, 40, generator()))


def _write(path, img):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)


def test_load_texture_bank_nested_mixed(tmp_path, caplog):
    rng = np.random.default_rng(0)
    _write(tmp_path / "a.jpg", rng.integers(0, 255, (20, 30, 3), dtype=np.uint8))
    _write(tmp_path / "sub" / "b.PNG", rng.integers(0, 255, (12, 12), dtype=np.uint8))  # grey
    _write(tmp_path / "sub" / "deeper" / "c.bmp", rng.integers(0, 255, (8, 40, 3), dtype=np.uint8))
    (tmp_path / "sub" / "broken.png").write_bytes(b"not an image")
    (tmp_path / "notes.txt").write_text("ignored")
    with caplog.at_level(logging.WARNING):
        bank = load_texture_bank(tmp_path, 16)
    assert bank.shape == (3, 3, 16, 16) and bank.dtype == torch.uint8
    assert "broken.png" in caplog.text
    assert load_texture_bank(tmp_path, 8, max_images=2).shape == (2, 3, 8, 8)


def test_load_texture_bank_empty(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images found in anomaly source folder"):
        load_texture_bank(tmp_path / "empty", 16)
