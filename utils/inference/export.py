"""Export a loaded detector to ONNX: image (B, 3, H, W) in [0, 1] -> anomaly_map (B, H, W), score (B,).

A pair whose feature prior sees whole working images (the aspect-kept default, `--scale auto`) is exported for one
working shape, that of the image given to detect.py: DRAEM and the prior on the whole image, fused. Otherwise the
graph takes S x S inputs: for `--scale square` the image, for a pair from before the aspect-kept default trained
with `--scale native` / N one tile (or a batch of tiles): `onnx_predict_tiled` cuts a whole image into tiles, runs
the ONNX session on them and stitches the maps exactly as detect.py does (utils/images/tiles.py), then scores the
stitched map.

Optional extras: `pip install onnx` to export, `pip install onnxruntime` to check the file against PyTorch.
Exporter order: torch's TorchScript exporter first (needs only `onnx`, fast, works on torch 2.4 and later,
deprecated since 2.9), then the torch.export-based ("dynamo") exporter, which also needs `onnxscript`, when the
TorchScript one fails or is gone.
"""
import copy
import inspect
import io
import logging
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.feature_prior import guided_sharpen
from model.model_unet import SCORE_KERNEL, Scorer, image_score
from utils.images.tiles import stitch
from utils.runtime import UsageError
from utils.storage.atomic import atomic_write_bytes

log = logging.getLogger(__name__)

INPUT_NAMES = ["image"]
OUTPUT_NAMES = ["anomaly_map", "score"]
# Max abs difference between ONNX Runtime and PyTorch, map and score (both in [0, 1)). The halves agree to float32
# rounding (the prior's distances of ~60 to 5e-5), but a tail table's slope 1 / beta multiplies that, and a pixel
# whose DRAEM evidence sits at the gate can go either way: a barely trained pair differed by up to 2.7e-3 at a few
# pixels (1e-7 elsewhere). A wrong graph differs by 0.1 and more.
TOLERANCE = 1e-2


class ExportGraph(nn.Module):
    """The detector's Scorer as the exported graph: image (B, 3, S, S) -> (anomaly map (B, S, S), score (B,))."""

    def __init__(self, scorer):
        super().__init__()
        self.scorer = scorer

    def forward(self, image):
        _, amap = self.scorer(image)
        return amap, self.scorer.score(amap)


class WholeImageGraph(nn.Module):
    """A pair whose prior sees whole working images (the aspect-kept default): image (B, 3, H, W) of one working
    shape -> (anomaly map (B, H, W), score (B,)). DRAEM runs on the whole image at once (edge pixels repeated at
    the bottom and right up to multiples of 32), the prior on the whole image, fused as detect.py fuses them. detect.py tiles DRAEM
    instead, so the two maps differ a little where tiles meet (docs/detection.md#onnx)."""

    def __init__(self, scorer, height, width):
        super().__init__()
        self.scorer, self.shape = scorer, (height, width)
        self.pad = (0, -width % 32, 0, -height % 32)  # left, right, top, bottom

    def forward(self, image):
        h, w = self.shape
        _, draem = self.scorer.networks(F.pad(image, self.pad, mode="replicate"))
        prior = self.scorer.prior
        amap = prior.fuse(prior.novelty(image), draem[:, :h, :w])
        score = self.scorer.score(amap)  # as detect.py: the score before the map's guided sharpening
        return self.scorer.sharpen(amap, image), score


def export_onnx(detector, path, check=True, shape=None):
    """Write the detector's fp32 inference graph to `path` (atomically); dynamic batch, fixed input shape: the
    checkpoint's size S (one tile), or for a pair whose prior sees whole images (the aspect-kept default) the
    working `shape` (H, W) of the images it will score (detect.py: the image given).

    With `check` and onnxruntime installed, the file is run on a random batch of 2 and compared with PyTorch
    (RuntimeError beyond TOLERANCE). Returns {"path": str, "checked": bool, "max_abs_diff": float | None}.
    """
    _require("onnx")
    path = Path(path)
    # A CPU fp32 copy: the detector itself stays on its device, and autocast plays no part in the graph.
    s = detector.scorer
    prior = None if s.prior is None else copy.deepcopy(s.prior).cpu().float()  # the feature prior rides along
    scorer = Scorer(copy.deepcopy(s.draem).cpu().float(), s.kernel, s.top_fraction, prior=prior, guide=s.guide)
    whole = prior is not None and not prior.per_tile
    if whole and shape is None:
        raise UsageError("--export_onnx: this pair's prior sees whole images: export with an image of the size "
                         "it will score (detect.py --image_path)")
    h, w = shape if whole else (detector.size, detector.size)
    graph = (WholeImageGraph(scorer, h, w) if whole else ExportGraph(scorer)).eval()
    atomic_write_bytes(path, _export_bytes(graph, _random_batch(2, (h, w), seed=0)))
    log.info("exported %s (input image (B, 3, %d, %d) in [0, 1] -> anomaly_map, score)%s", path, h, w,
             f"; images of this working shape, DRAEM on the whole image (detect.py tiles it)" if whole else
             "" if detector.scale == "square" else
             f"; scale {detector.scale}: the input is one tile, use utils.inference.export.onnx_predict_tiled")
    diff = _check(graph, path, (h, w)) if check else None
    return {"path": str(path), "checked": diff is not None, "max_abs_diff": diff}


def onnx_predict_tiled(session, image, tile, kernel=SCORE_KERNEL, tile_batch=16, top_fraction=0.0, guide=0):
    """Anomaly map (H, W) and score (0-d) of a whole image (3, H, W) in [0, 1] at the working scale, from an
    onnxruntime session of an exported tile model (tile = the checkpoint's size, kernel and top_fraction = its
    score_kernel and score_top_fraction, guide = the radius of its map's guided sharpening, `detector.scorer.guide`).

        session = onnxruntime.InferenceSession("draem.onnx")
        amap, score = onnx_predict_tiled(session, detector.read("strip.png"), detector.size, detector.scorer.kernel,
                                         top_fraction=detector.scorer.top_fraction, guide=detector.scorer.guide)
    """
    def run(tiles):  # (B, 3, tile, tile) -> (B, tile, tile) from the ONNX graph; no reconstruction output
        amap = session.run(OUTPUT_NAMES[:1], {INPUT_NAMES[0]: tiles.numpy()})[0]
        return torch.from_numpy(amap), None
    image = torch.as_tensor(image, dtype=torch.float32)
    amap = stitch(image, run, tile, tile_batch=tile_batch)["anomaly_map"]
    score = image_score(amap[None], kernel, top_fraction)[0]  # as detect.py: before the guided sharpening
    return (guided_sharpen(amap[None], image[None], guide)[0] if guide else amap), score


def _require(package):
    try:
        __import__(package)
    except ImportError:
        raise UsageError(f"ONNX export needs the `{package}` package: pip install {package}") from None


def _random_batch(n, shape, seed):
    h, w = (shape, shape) if isinstance(shape, int) else shape
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))  # (n, 3, H, W)


def _export_bytes(scorer, example):
    """The serialized ONNX model, from the TorchScript exporter or else the dynamo one."""
    try:
        return _export_torchscript(scorer, example)
    except Exception as e:
        if "dynamo" not in inspect.signature(torch.onnx.export).parameters:  # torch 2.4: nothing to fall back to
            raise
        reason = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:160]}"
        try:
            __import__("onnxscript")
        except ImportError:
            raise UsageError(f"torch's TorchScript ONNX exporter failed ({reason}); the dynamo exporter needs "
                             f"the `onnxscript` package: pip install onnxscript") from None
        log.warning("TorchScript ONNX exporter failed (%s); using the dynamo exporter", reason)
        return _export_dynamo(scorer, example)


def _export_torchscript(scorer, example):
    kwargs = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # Its deprecation notice, and the tracer's note on the static multiple-of-32 size check.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", getattr(torch.jit, "TracerWarning", DeprecationWarning))
        torch.onnx.export(scorer, (example,), buf, input_names=INPUT_NAMES, output_names=OUTPUT_NAMES,
                          dynamic_axes={name: {0: "batch"} for name in INPUT_NAMES + OUTPUT_NAMES}, **kwargs)
    return buf.getvalue()


def _export_dynamo(scorer, example):
    # f=None and model_proto keep the weights inside one file (saving to a path writes a separate .data file).
    program = torch.onnx.export(scorer, (example,), None, dynamo=True, verbose=False,
                                input_names=INPUT_NAMES, output_names=OUTPUT_NAMES,
                                dynamic_shapes=({0: torch.export.Dim("batch")},))
    return program.model_proto.SerializeToString()


def _check(scorer, path, shape):
    """Max abs difference between ONNX Runtime and PyTorch on a random batch of 2; None without onnxruntime."""
    try:
        import onnxruntime
    except ImportError:
        log.info("onnxruntime is not installed: %s not checked (pip install onnxruntime)", path)
        return None
    images = _random_batch(2, shape, seed=1)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(OUTPUT_NAMES, {INPUT_NAMES[0]: images.numpy()})
    with torch.inference_mode():
        want = scorer(images)  # (2, S, S), (2,)
    if [g.shape for g in got] != [tuple(w.shape) for w in want]:
        raise RuntimeError(f"ONNX export of {path} gives shapes {[g.shape for g in got]}, PyTorch "
                           f"{[tuple(w.shape) for w in want]}")
    diff = max(float((torch.from_numpy(g) - w).abs().max()) for g, w in zip(got, want))
    if not diff <= TOLERANCE:  # also catches NaN
        raise RuntimeError(f"ONNX export of {path} does not match PyTorch: max abs diff {diff:.3g} "
                           f"> {TOLERANCE:g}")
    log.info("checked %s with onnxruntime %s: max abs diff %.2e vs PyTorch", path, onnxruntime.__version__, diff)
    return diff
