"""train.py end to end at tiny widths and sizes on generated folders (CPU, seeded)."""
import csv
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

import train
from model.feature_prior import FEATURE_CHANNELS, guided_sharpen
from model.model_unet import anomaly_map
from tests.conftest import write_images
from utils.config import PHOTOMETRIC, PRESETS, RECIPES, Config
from utils.data_loader import list_images, resolve_classes, split_files
from utils.evaluation.thresholds import calibrate_threshold
from utils.inference.detector import Detector
from utils.runtime import init_distributed
from utils.storage.pairs import base_model_name, load_pair, pair_paths
from utils.training.engine import train_class

TINY = ["--size", "32", "--rec_base_width", "4", "--seg_base_width", "2", "--bs", "4", "--amp", "off"]


def run_train(tmp_path, *extra, data=None):
    data = data or tmp_path / "widget" / "train" / "good"
    if not data.exists():
        write_images(data, 12)
    args = ["--data_path", str(data), "--checkpoint_path", str(tmp_path / "ckpt"),
            "--log_path", str(tmp_path / "logs"), *TINY, *extra]
    return train.main(args)


def test_short_run_writes_seed_named_pair_csv_and_png(tmp_path):
    assert run_train(tmp_path, "--epochs", "2", "--lr", "0.001") == 0
    base = base_model_name(0.001, 2, 4, "widget")
    assert base == "DRAEM_test_0.001_2_bs4_widget_"
    rec, seg = pair_paths(tmp_path / "ckpt", base)
    assert rec.is_file() and seg.is_file()
    # reload with weights_only and rebuild without architecture flags
    obj = torch.load(rec, weights_only=True)
    assert obj["config"]["rec_base_width"] == 4 and obj["config"]["size"] == 32
    model, meta = load_pair(tmp_path / "ckpt", base)
    assert meta["calibration"]["threshold"] is not None and meta["calibration"]["target_false_reject"] == 0.02
    rec_out, logits = model(torch.rand(1, 3, 32, 32))
    assert logits.shape == (1, 2, 32, 32)
    run_dir = next((tmp_path / "logs").iterdir())
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    assert len(rows) == 2 and {"l2", "ssim", "focal", "loss", "lr", "val_image_auroc", "val_rec_r2",
                               "val_rec_r2_min"} <= set(rows[0])
    last_calibration = load_pair(tmp_path / "ckpt", base + "last")[1]["calibration"]
    assert last_calibration["val_rec_r2"] == pytest.approx(float(rows[-1]["val_rec_r2"]))
    assert (run_dir / "loss_curve.png").stat().st_size > 1000
    assert (run_dir / "config.json").is_file() and (run_dir / "command.txt").is_file()
    assert pair_paths(tmp_path / "ckpt", base + "last")[1].is_file()


def test_resume_gives_the_same_weights_as_uninterrupted(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    data = tmp_path / "widget" / "train" / "good"
    write_images(data, 12)
    assert run_train(a, "--epochs", "3", data=data) == 0
    assert run_train(b, "--epochs", "3", "--stop_after_epoch", "1", data=data) == 0
    assert run_train(b, "--epochs", "3", "--resume", data=data) == 0
    base = base_model_name(0.0001, 3, 4, "widget") + "last"
    for pa, pb in zip(pair_paths(a / "ckpt", base), pair_paths(b / "ckpt", base)):
        sa, sb = torch.load(pa, weights_only=True)["state_dict"], torch.load(pb, weights_only=True)["state_dict"]
        for k in sa:
            assert torch.equal(sa[k], sb[k]), k
    run_dirs = list((b / "logs").iterdir())
    assert len(run_dirs) == 1 and len(list(csv.DictReader(open(run_dirs[0] / "metrics.csv")))) == 3


def test_mvtec_root_obj_id_and_all_classes(tmp_path):
    for c in ("alpha", "beta"):
        write_images(tmp_path / "root" / c / "train" / "good", 6)
    assert run_train(tmp_path, "--epochs", "1", "--obj_id", "1", data=tmp_path / "root") == 0
    assert pair_paths(tmp_path / "ckpt", base_model_name(0.0001, 1, 4, "beta"))[0].is_file()
    assert not pair_paths(tmp_path / "ckpt", base_model_name(0.0001, 1, 4, "alpha"))[0].is_file()
    assert run_train(tmp_path, "--epochs", "1", "--obj_id", "-1", data=tmp_path / "root") == 0
    assert pair_paths(tmp_path / "ckpt", base_model_name(0.0001, 1, 4, "alpha"))[0].is_file()


@pytest.mark.parametrize("flags,message", [
    (["--size", "100"], "multiple of 32"),
    (["--bs", "0"], "positive"),
    (["--lr", "-1"], "positive"),
    (["--val_fraction", "1.5"], "[0, 1)"),
    (["--epochs", "two"], "invalid"),
])
def test_bad_flags_exit_2_without_traceback(flags, message, capsys):
    with pytest.raises(SystemExit) as e:
        train.main(["--data_path", ".", *flags])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_bad_paths_exit_2(tmp_path, capsys):
    assert train.main(["--data_path", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err
    write_images(tmp_path / "r" / "a" / "train" / "good", 3)
    assert train.main(["--data_path", str(tmp_path / "r"), "--obj_id", "5"]) == 2
    assert "0=a" in capsys.readouterr().err
    empty = tmp_path / "textures"
    empty.mkdir()
    assert run_train(tmp_path, "--epochs", "1", "--anomaly_source_path", str(empty)) == 2
    assert "textures" in capsys.readouterr().err


def _ddp_worker(rank, world, port, tmp_path, data):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    cfg = train.parse_args(["--data_path", str(data), "--checkpoint_path", str(tmp_path / "ckpt"),
                            "--log_path", str(tmp_path / "logs"), *TINY, "--epochs", "1", "--gpu_id", "-1"])
    device = init_distributed(cfg.gpu_id)  # gloo: the same call torchrun makes
    [(name, good)] = resolve_classes(cfg.data_path, cfg.obj_id)
    _, model = train_class(cfg, name, good, device, ["train.py"])
    # every rank dumps its weights so the parent can compare them
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, tmp_path / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_two_process_gloo_ddp_keeps_ranks_identical(tmp_path):
    data = tmp_path / "widget" / "train" / "good"
    write_images(data, 16)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, tmp_path, data), nprocs=2, join=True)
    w0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    assert pair_paths(tmp_path / "ckpt", base_model_name(0.0001, 1, 4, "widget"))[0].is_file()


def test_unreadable_training_file_is_skipped_with_a_warning(tmp_path, caplog):
    data = tmp_path / "widget" / "train" / "good"
    write_images(data, 12)
    (data / "zz_broken.png").write_bytes(b"not a png")
    assert run_train(tmp_path, "--epochs", "1", data=data) == 0
    assert "zz_broken.png" in caplog.text


def test_presets_give_the_defaults_and_flags_override_them():
    cfg = train.parse_args(["--data_path", ".", "--size", "64", "--preset", "paper"])
    assert cfg.preset == "paper" and cfg.size == 64 and cfg.epochs == PRESETS["paper"]["epochs"]
    cfg = train.parse_args(["--data_path", ".", "--preset", "cpu"])
    assert cfg.preset == "cpu" and cfg.bs == PRESETS["cpu"]["bs"] and cfg.size == PRESETS["cpu"]["size"]
    assert train.parse_args([]).preset == "cpu"  # the demo


def test_max_minutes_without_epochs_fills_the_budget_and_keeps_the_pair_name():
    cfg = train.parse_args(["--data_path", ".", "--preset", "cpu", "--max_minutes", "10"])
    assert cfg.fill_budget and cfg.epochs == PRESETS["cpu"]["epochs"]  # the name: ..._20_bs8_..., as before
    for argv in (["--max_minutes", "10", "--epochs", "20"], ["--max_minutes", "10", "--epochs=3"], []):
        assert not train.parse_args(["--data_path", ".", *argv]).fill_budget  # an explicit --epochs caps it


def test_help_shows_the_real_defaults_of_the_preset(capsys):
    for argv, size in ((["--preset", "cpu"], "128"), (["--data_path", ".", "--preset", "paper"], "256")):
        with pytest.raises(SystemExit):
            train.parse_args([*argv, "--help"])
        text = capsys.readouterr().out
        assert f"(default: {size})" in text and "from --preset" not in text


def test_short_run_with_jitter_and_resume(tmp_path):
    levers = ["--jitter", "photo,flip"]
    assert run_train(tmp_path, "--epochs", "2", "--stop_after_epoch", "1", *levers) == 0
    assert run_train(tmp_path, "--epochs", "2", "--resume", *levers) == 0
    model, meta = load_pair(tmp_path / "ckpt", base_model_name(0.0001, 2, 4, "widget"))
    assert meta["calibration"]["threshold"] is not None


def test_unknown_jitter_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        run_train(tmp_path, "--jitter", "hue")
    assert e.value.code == 2 and "unknown jitter 'hue'" in capsys.readouterr().err


def test_score_rule_and_jitter_defaults_follow_the_recipe():
    for recipe in ("ours", "paper"):
        cfg = train.parse_args(["--data_path", ".", "--recipe", recipe])
        assert cfg.score_top_fraction == RECIPES[recipe]["score_top_fraction"]
        assert cfg.jitter == RECIPES[recipe]["jitter"]
    assert RECIPES["ours"]["jitter"] == PHOTOMETRIC
    assert train.parse_args(["--data_path", ".", "--jitter", "none"]).jitter == ()
    assert Config.build("cpu", "ours").to_dict()["jitter"] == list(PHOTOMETRIC)  # plain types for checkpoints


def test_outputs_inside_the_training_folder_are_refused(tmp_path, capsys):
    data = tmp_path / "widget" / "train" / "good"
    write_images(data, 4)
    assert train.main(["--data_path", str(data), "--checkpoint_path", str(data / "ck"), *TINY]) == 2
    assert "inside the input folder --data_path" in capsys.readouterr().err and not (data / "ck").exists()


def test_max_minutes_stops_after_a_step_with_a_checkpoint(tmp_path):
    assert run_train(tmp_path, "--epochs", "3", "--max_minutes", "0.00001") == 0
    base = base_model_name(0.0001, 3, 4, "widget")
    rows = list(csv.DictReader(open(next((tmp_path / "logs").rglob("metrics.csv")))))
    assert len(rows) == 1 and rows[0]["step"] == "1"
    assert load_pair(tmp_path / "ckpt", base)[1]["calibration"]["threshold"] is not None


def test_prior_pair_loads_with_weights_only_and_detect_scores_as_calibration_did(tmp_path):
    assert run_train(tmp_path, "--epochs", "1") == 0  # recipe ours: --prior features
    base = base_model_name(0.0001, 1, 4, "widget")
    prior = torch.load(pair_paths(tmp_path / "ckpt", base)[1], weights_only=True)["prior"]
    assert prior["bank"].dtype == torch.float16 and prior["bank"].shape[1] == FEATURE_CHANNELS
    assert prior["bank"].numel() * 2 < 20e6 and {"knots", "evidence", "beta"} <= set(prior["draem_tail"])
    detector = Detector.from_checkpoint(tmp_path / "ckpt", base)
    assert detector.scorer.prior is not None
    amap = detector.score(torch.rand(32, 32, 3).numpy())["anomaly_map"][0]
    assert amap.shape == (32, 32) and 0 <= amap.min() and amap.max() < 1
    # one path: the held-out images scored by detect.py give the threshold training calibrated
    held = split_files(list_images(tmp_path / "widget" / "train" / "good"), 0.1, 0)[1]
    again = calibrate_threshold(detector.score_files(held), 0.02)["threshold"]
    assert again == pytest.approx(detector.threshold, rel=1e-5, abs=1e-6)


def test_prior_none_scores_as_draem_alone(tmp_path):
    assert run_train(tmp_path, "--epochs", "1", "--prior", "none") == 0
    base = base_model_name(0.0001, 1, 4, "widget")
    assert "prior" not in torch.load(pair_paths(tmp_path / "ckpt", base)[1], weights_only=True)
    detector = Detector.from_checkpoint(tmp_path / "ckpt", base)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = detector.predict(list(x))
    with torch.inference_mode():
        raw = anomaly_map(detector.scorer.draem(x)[1])  # DRAEM's softmax, bit for bit in the score
        assert torch.equal(torch.stack(out["score"]), detector.scorer.score(raw))
        # the map shown: sharpened along the image, as at every scale but square (docs/prior.md)
        assert torch.allclose(torch.stack(out["anomaly_map"]), guided_sharpen(raw, x, detector.scorer.guide), atol=1e-6)


def test_paper_recipe_has_no_prior():
    assert Config.build("cpu", "paper").prior == "none" and Config.build("cpu", "ours").prior == "features"
