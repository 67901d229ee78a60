"""utils/sample_grid.py: the grid of synthetic samples."""
import cv2
import numpy as np

from utils.synthesis.grid import main


def _write(path, img):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)


def test_sample_grid_cli(tmp_path):
    rng = np.random.default_rng(1)
    for i in range(3):
        _write(tmp_path / "good" / f"{i}.png", rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
    _write(tmp_path / "dtd" / "t.jpg", rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
    out = tmp_path / "grid.png"
    main(["--data_path", str(tmp_path / "good"), "--anomaly_source_path", str(tmp_path / "dtd"),
          "--size", "32", "--n", "2", "--out", str(out), "--grayscale"])
    assert out.stat().st_size > 0
