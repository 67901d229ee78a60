"""utils/inference/export.py: a tiny detector exported, run in ONNX Runtime against PyTorch, and via detect.py."""
import sys
import types

import pytest
import torch

import detect
from model.model_unet import DRAEM
from tests.conftest import write_images
from utils.inference import export as onnx_export
from utils.inference.detector import Detector
from utils.inference.export import ExportGraph, export_onnx
from utils.runtime import UsageError
from utils.storage.pairs import save_pair

SIZE = 32


def tiny_detector(seed=0):
    torch.manual_seed(seed)
    model = DRAEM(rec_base_width=4, seg_base_width=2)
    meta = {"config": {"size": SIZE}, "calibration": {"threshold": None}}
    return Detector(model, meta, torch.device("cpu"))


def test_onnx_matches_pytorch_with_dynamic_batch(tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    detector = tiny_detector()
    path = tmp_path / "sub" / "draem.onnx"
    result = export_onnx(detector, path)
    assert result == {"path": str(path), "checked": True, "max_abs_diff": pytest.approx(0, abs=1e-4)}
    assert [p.name for p in path.parent.iterdir()] == ["draem.onnx"]  # one file, no temp or .data left over

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    images = torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5))  # batch 3, exported with 2
    amap, score = session.run(["anomaly_map", "score"], {"image": images.numpy()})
    with torch.inference_mode():
        want_map, want_score = ExportGraph(detector.scorer).eval()(images)
    assert amap.shape == (3, SIZE, SIZE) and score.shape == (3,)
    assert (torch.from_numpy(amap) - want_map).abs().max() <= 1e-4
    assert (torch.from_numpy(score) - want_score).abs().max() <= 1e-4
    assert detector.scorer.training is False  # the detector itself is left as it was


def test_detect_export_flag_writes_the_file(tmp_path):
    pytest.importorskip("onnx")
    detector = tiny_detector(seed=1)
    base = "DRAEM_test_tiny_"
    config = {"size": SIZE, "rec_base_width": 4, "seg_base_width": 2, "in_channels": 3, "grayscale": False}
    save_pair(detector.scorer.draem, tmp_path / "ckpt", base, config, {"threshold": None, "rule": "none"}, "pair0")
    image = write_images(tmp_path / "images", 1, size=40)[0]
    onnx_path = tmp_path / "exported.onnx"
    rc = detect.main(["--image_path", str(image), "--checkpoint_path", str(tmp_path / "ckpt"),
                      "--base_model_name", base, "--output_path", str(tmp_path / "out.png"), "--gpu_id", "-1",
                      "--export_onnx", str(onnx_path)])
    assert rc == 0
    assert onnx_path.is_file() and onnx_path.stat().st_size > 0
    assert (tmp_path / "out.png").is_file()


def test_missing_onnx_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` now raises ImportError
    with pytest.raises(UsageError, match=r"pip install onnx$"):
        export_onnx(tiny_detector(), tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_missing_onnxscript_named_when_torchscript_exporter_fails(tmp_path, monkeypatch):
    if "dynamo" not in onnx_export.inspect.signature(torch.onnx.export).parameters:
        pytest.skip("torch < 2.5 has no dynamo exporter to fall back to")
    monkeypatch.setitem(sys.modules, "onnx", types.ModuleType("onnx"))  # present, whether installed or not
    monkeypatch.setitem(sys.modules, "onnxscript", None)

    def gone(*args):
        raise RuntimeError("TorchScript exporter removed")

    monkeypatch.setattr(onnx_export, "_export_torchscript", gone)
    with pytest.raises(UsageError, match=r"TorchScript exporter removed.*pip install onnxscript"):
        export_onnx(tiny_detector(), tmp_path / "x.onnx")
    assert list(tmp_path.iterdir()) == []


def test_a_pair_whose_prior_sees_whole_images_exports_its_working_shape(tmp_path):
    """The aspect-kept default: the graph takes whole working images of the shape given, DRAEM and the prior
    fused as detect.py fuses them; ONNX Runtime matches PyTorch."""
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from model.feature_prior import FeaturePrior, PriorFusion, TailEvidence
    detector = tiny_detector(seed=2)
    torch.manual_seed(0)
    tail = TailEvidence.fit(torch.rand(500))
    detector.scorer.prior = PriorFusion(FeaturePrior(torch.randn(64, 152), side=32), tail, tail)
    with pytest.raises(UsageError, match="whole images"):
        export_onnx(detector, tmp_path / "no.onnx")
    result = export_onnx(detector, tmp_path / "whole.onnx", shape=(40, 100))
    assert result["checked"] and result["max_abs_diff"] <= 1e-4
    session = ort.InferenceSession(str(tmp_path / "whole.onnx"), providers=["CPUExecutionProvider"])
    amap, score = session.run(["anomaly_map", "score"], {"image": torch.rand(1, 3, 40, 100).numpy()})
    assert amap.shape == (1, 40, 100) and score.shape == (1,)
