"""Tests for utils/training_logger.py: run folder, config/command files, metrics.csv and the loss plot."""
import csv
import json
import shlex
from pathlib import Path

import cv2
import pytest

from utils.training_logger import TrainingLogger

CONFIG = {"lr": 1e-4, "epochs": 3, "data_root": Path("data") / "mvtec", "obj": "metal_plate"}
ARGV = ["train.py", "--data-root", "data/my images", "--epochs", "3"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _rows(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _header(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8") as f:
        return next(csv.reader(f))


@pytest.fixture
def run(tmp_path):
    return TrainingLogger(tmp_path / "logs", "draem_test", CONFIG, argv=ARGV)


def test_run_folder_config_and_command(tmp_path, run):
    assert run.run_dir == tmp_path / "logs" / "draem_test" and run.run_dir.is_dir()
    text = (run.run_dir / "config.json").read_text()
    config = json.loads(text)
    assert config == {**CONFIG, "data_root": str(CONFIG["data_root"])}
    assert list(config) == sorted(config)  # sorted keys
    assert text.startswith('{\n  "')  # indent 2
    command = (run.run_dir / "command.txt").read_text().strip()
    assert shlex.split(command) == ["python"] + ARGV
    assert "'data/my images'" in command  # quoted so it can be pasted back into a shell


def test_existing_run_folder_gets_a_suffix(tmp_path, run):
    second = TrainingLogger(tmp_path / "logs", "draem_test", CONFIG, argv=ARGV)
    third = TrainingLogger(tmp_path / "logs", "draem_test", CONFIG, argv=ARGV)
    assert second.run_dir.name == "draem_test_1" and third.run_dir.name == "draem_test_2"
    assert (second.run_dir / "config.json").is_file()


def test_argv_defaults_to_sys_argv(tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["train.py", "--epochs", "1"])
    log = TrainingLogger(tmp_path, "r", {})
    assert (log.run_dir / "command.txt").read_text().strip() == "python train.py --epochs 1"


def test_metrics_rows_and_widened_header(run):
    run.log_epoch({"epoch": 1, "step": 10, "lr": 1e-4, "l2": 0.5, "ssim": 0.4, "focal": 0.3, "loss": 1.2,
                   "seconds": 3.5})
    run.log_epoch({"epoch": 2, "step": 20, "lr": 1e-4, "l2": 0.25, "ssim": 0.2, "focal": 0.1, "loss": 0.55,
                   "seconds": 3.4})
    header = ["epoch", "step", "lr", "l2", "ssim", "focal", "loss", "seconds"]
    assert _header(run.metrics_path) == header
    assert [r["loss"] for r in _rows(run.metrics_path)] == ["1.2", "0.55"]

    # A validation epoch brings new columns: the header widens, earlier rows get empty cells.
    run.log_epoch({"epoch": 3, "loss": 0.4, "val_image_auroc": 0.9, "val_pixel_ap": 0.6})
    assert _header(run.metrics_path) == header + ["val_image_auroc", "val_pixel_ap"]
    rows = _rows(run.metrics_path)
    assert len(rows) == 3
    assert rows[0]["val_image_auroc"] == "" and rows[0]["l2"] == "0.5"
    assert rows[2]["val_image_auroc"] == "0.9" and rows[2]["l2"] == ""

    run.log_epoch({"epoch": 4, "loss": 0.3, "val_image_auroc": 0.95})  # appended under the wide header
    assert [r["epoch"] for r in _rows(run.metrics_path)] == ["1", "2", "3", "4"]


def test_tensor_values_are_written_as_numbers(run):
    torch = pytest.importorskip("torch")
    run.log_epoch({"epoch": 1, "loss": torch.tensor(0.5)})
    assert _rows(run.metrics_path)[0]["loss"] == "0.5"


@pytest.mark.parametrize("with_val", [False, True])
def test_loss_curve_is_a_valid_png(run, with_val):
    for epoch in range(1, 4):
        row = {"epoch": epoch, "l2": 0.1 / epoch, "ssim": 0.2 / epoch, "focal": 0.05 / epoch, "loss": 0.35 / epoch}
        if with_val:
            row["val_image_auroc"] = 0.5 + 0.1 * epoch
        run.log_epoch(row)
    data = run.plot_path.read_bytes()
    assert data.startswith(PNG_MAGIC)
    image = cv2.imread(str(run.plot_path))
    assert image is not None and image.shape[0] > 100 and image.shape[1] > 100
    assert not [p for p in run.run_dir.iterdir() if p.name.endswith(".tmp")]  # atomic writes cleaned up


def test_plot_has_titles_labels_and_val_panel(run):
    run.log_epoch({"epoch": 1, "l2": 0.1, "ssim": 0.2, "focal": 0.05, "loss": 0.35, "val_pixel_ap": 0.4})
    fig = run._build_plot()
    losses, val = fig.axes
    assert "draem_test" in fig.get_suptitle()
    assert [t.get_text() for t in losses.get_legend().get_texts()] == ["L2", "SSIM", "focal", "total"]
    assert losses.get_xlabel() == "epoch" and losses.get_yscale() == "log"
    assert val.get_ylim() == (0.0, 1.02)


def test_disabled_logger_writes_nothing(tmp_path):
    log = TrainingLogger(tmp_path / "logs", "rank1", CONFIG, argv=ARGV, enabled=False)
    log.log_epoch({"epoch": 1, "loss": 0.5})
    assert list(tmp_path.iterdir()) == []


def test_sparse_validation_points_are_plotted(run, monkeypatch):
    # Validation every 5th epoch leaves NaN cells; the curve must join the points, not vanish.
    monkeypatch.setattr(run, "_write_plot", lambda: None)  # draw once below, not 40 times
    for epoch in range(1, 41):
        run.log_epoch({"epoch": epoch, "loss": 1.0 / epoch, **({"val_image_auroc": 0.8} if epoch % 5 == 0 else {})})
    line = run._build_plot().axes[1].get_lines()[0]
    assert list(line.get_xdata()) == list(range(5, 41, 5))
