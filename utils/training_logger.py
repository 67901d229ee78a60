"""One run folder per training run: config.json, command.txt, metrics.csv (a row per epoch), loss_curve.png.

Layout::

    <log_root>/<run_name>[_N]/
        config.json      the run's settings (sorted keys)
        command.txt      the command line that started the run
        metrics.csv      one row per epoch (losses, val_* validation metrics); new columns widen the header
        loss_curve.png   losses per epoch (left) and validation metrics in [0, 1] (right), refreshed each epoch
"""
import csv
import io
import json
import logging
import math
import shlex
import shutil
import sys
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from utils.runtime import display_name
from utils.storage.atomic import atomic_write_bytes

logger = logging.getLogger(__name__)

# (column, legend label) of the loss curves, drawn when the column is present.
LOSS_COLUMNS = (("l2", "L2"), ("ssim", "SSIM"), ("focal", "focal"), ("loss", "total"))
VAL_PREFIX = "val_"


def _unique_run_dir(log_root: Path, run_name: str) -> Path:
    """log_root/run_name, or run_name_1, _2, ... if that folder already exists."""
    candidate, n = log_root / run_name, 0
    while candidate.exists():
        n += 1
        candidate = log_root / f"{run_name}_{n}"
    return candidate


def _to_json(value):
    """``json.dumps`` fallback: paths and NumPy values to plain types, anything else to its str()."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    logger.warning("config value %r of type %s written as a string", value, type(value).__name__)
    return str(value)


def _plain(value):
    """A 0-d tensor / NumPy scalar to a Python number, so the CSV holds '0.5' and not 'tensor(0.5)'."""
    return value.item() if hasattr(value, "item") else value


def _to_float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


class TrainingLogger:
    """Writes a run folder; with ``enabled=False`` (non-zero distributed ranks) every method does nothing.

    argv: the full command line as in ``sys.argv`` (script first); None -> ``sys.argv``.
    ``run_dir`` is the folder actually used (with a ``_N`` suffix if ``log_root/run_name`` existed);
    a disabled logger creates nothing and its ``run_dir`` is just ``log_root/run_name``.
    """

    def __init__(self, log_root, run_name, config: dict, argv: list[str] | None = None, enabled=True,
                 run_dir=None):
        """run_dir: an existing run folder to continue (``--resume``): its metrics.csv rows are kept."""
        self.enabled = enabled
        self.run_name = str(run_name)
        self._columns: list[str] = []
        self._rows: list[dict] = []
        log_root = Path(log_root)
        if not enabled:
            self.run_dir = log_root / self.run_name
            return
        argv = sys.argv if argv is None else argv
        # the exact bytes of the command (file names need not be UTF-8), so the line runs again in a shell
        command = (shlex.join(["python"] + [str(a) for a in argv]) + "\n").encode("utf-8", "surrogateescape")
        if run_dir is not None and Path(run_dir).is_dir():
            self.run_dir = Path(run_dir)
            self._reload_csv()
            commands = self.run_dir / "command.txt"
            atomic_write_bytes(commands, (commands.read_bytes() if commands.is_file() else b"") + command)
            logger.info("run folder (resumed): %s", self.run_dir)
            return
        log_root.mkdir(parents=True, exist_ok=True)
        self.run_dir = _unique_run_dir(log_root, self.run_name)
        self.run_dir.mkdir()
        config_text = json.dumps(config, sort_keys=True, indent=2, default=_to_json) + "\n"
        try:
            atomic_write_bytes(self.run_dir / "config.json", config_text.encode("utf-8"))
            atomic_write_bytes(self.run_dir / "command.txt", command)
        except BaseException:
            shutil.rmtree(self.run_dir, ignore_errors=True)  # made by this run a moment ago: nothing half-made
            raise
        logger.info("run folder: %s", self.run_dir)

    def _reload_csv(self) -> None:
        if self.metrics_path.is_file():
            with self.metrics_path.open(newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                self._columns = list(reader.fieldnames or [])
                self._rows = [{k: v for k, v in r.items() if v != ""} for r in reader]

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / "metrics.csv"

    @property
    def plot_path(self) -> Path:
        return self.run_dir / "loss_curve.png"

    def log_epoch(self, row: dict) -> None:
        """Append one row to metrics.csv and redraw loss_curve.png."""
        if not self.enabled:
            return
        row = {str(k): _plain(v) for k, v in row.items()}
        self._columns.extend([k for k in row if k not in self._columns])
        self._rows.append(row)
        self._rewrite_csv()  # whole, atomically (a full disk never leaves half a row); new columns widen the header
        self._write_plot()

    def _rewrite_csv(self) -> None:
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=self._columns, restval="")
        writer.writeheader()
        writer.writerows(self._rows)
        atomic_write_bytes(self.metrics_path, text.getvalue().encode("utf-8"))

    def _series(self, key: str) -> np.ndarray:
        """Column ``key`` as floats, NaN where a row has no value."""
        return np.array([_to_float(r.get(key)) for r in self._rows], dtype=float)

    def _plot(self, ax, epochs, key, **style) -> np.ndarray:
        """Plot column ``key`` over its non-empty rows (validation runs only every few epochs: joining
        those points beats a line broken at every NaN). Returns the plotted values."""
        values = self._series(key)
        keep = np.isfinite(values) & np.isfinite(epochs)
        ax.plot(epochs[keep], values[keep], markersize=3, **style)
        return values[keep]

    def _write_plot(self) -> None:
        fig = self._build_plot()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        atomic_write_bytes(self.plot_path, buffer.getvalue())

    def _build_plot(self) -> Figure:
        epochs = self._series("epoch") if "epoch" in self._columns else np.arange(1.0, len(self._rows) + 1)
        val_keys = [k for k in self._columns if k.startswith(VAL_PREFIX)]
        fig = Figure(figsize=(12 if val_keys else 7, 4.5), dpi=100, layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, 2 if val_keys else 1, squeeze=False, sharex=True)[0]
        self._draw_losses(axes[0], epochs)
        if val_keys:
            self._draw_val(axes[1], epochs, val_keys)
        fig.suptitle(f"{display_name(self.run_dir.name)}: training curves", fontsize=13)
        return fig

    def _draw_losses(self, ax, epochs) -> None:
        marker = "o" if len(self._rows) < 30 else None  # a single epoch must still show up
        plotted = [
            self._plot(ax, epochs, key, label=label, marker=marker, linewidth=2.2 if key == "loss" else 1.4)
            for key, label in LOSS_COLUMNS
            if key in self._columns
        ]
        ax.set_title("Losses")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss (per epoch mean)")
        ax.grid(True, alpha=0.3)
        values = np.concatenate(plotted) if plotted else np.empty(0)
        if values.size and (values > 0).all():
            ax.set_yscale("log")  # the losses differ by orders of magnitude
            ax.set_ylabel("loss (per epoch mean, log scale)")
        if plotted:
            ax.legend(loc="upper right")

    def _draw_val(self, ax, epochs, val_keys) -> None:
        lowest = 0.0
        for key in val_keys:
            values = self._plot(ax, epochs, key, label=key[len(VAL_PREFIX):], marker="o", linewidth=1.6)
            lowest = min([lowest, *values])
        ax.set_ylim(max(-1.0, lowest), 1.02)  # a reconstruction's R2 can be below 0 (shown down to -1)
        ax.set_title("Validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel("metric")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right")
