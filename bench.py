"""Time DRAEM's training and detection through the same functions train.py and detect.py use (docs/speed.md).

Per configuration and precision: training img/s end to end (uint8 cache -> DataLoader -> utils.training.engine.train_step,
which synthesises) against train_step on a pre-made batch; Detector.predict ms/image against a bare forward; tiled
detection (--scale native) of a (2 size) x (8 size) image; peak memory. Per configuration: read_image ms, the
largest |score fp32 - bf16|, the feature prior (fp32: bank fit s per 1000 images = features per image x 1000 + the
coreset once; bank MB; detect ms against DRAEM alone, target <= 2). Once: synthesis samples/s. Medians after
warm-up, e2e and bare steps interleaved so that a change of machine load hits both."""
from utils.cli import exit_quietly_on_signals, positive_int, size_arg
from utils.runtime import cpu_has_native_bf16, resolve_amp, seed_everything

exit_quietly_on_signals("bench.py", __name__)  # a signal during the imports below: one line

import argparse
import copy
import json
import logging
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from model import DRAEM, weights_init
from model.feature_prior import (CORESET_SIZE, FEATURE_CHANNELS, PRIOR_SIZE, FeaturePrior, FineEvidence,
                                 PriorFusion, TailEvidence, fit_prior, load_backbone)
from model.model_unet import autocast
from utils.config import PRESETS, Config
from utils.images.reading import auto_zoom, image_file_size, read_image
from utils.images.tiles import count_tiles
from utils.inference.detector import Detector
from utils.loss import DraemLoss
from utils.synthesis.simulation import make_synthesizer
from utils.synthesis.textures import load_texture_bank
from utils.training.engine import prepare_batch, train_step
from utils.training.schedule import make_optimizer

log = logging.getLogger("bench")

# Sizes benchmarked; "tiny" is for the smoke test. Steps: the defaults for --warmup / --iters per device.
CONFIGS = {name: {k: PRESETS[name][k] for k in ("size", "rec_base_width", "seg_base_width", "bs")}
           for name in ("cpu", "paper")}
CONFIGS["tiny"] = dict(size=32, rec_base_width=4, seg_base_width=2, bs=2)
STEPS = {"cpu": {"cpu": (1, 3), "paper": (1, 1), "tiny": (1, 1)},  # (warm-up, timed) training steps
         "cuda": {"cpu": (3, 20), "paper": (3, 20), "tiny": (1, 2)}}
DETECT_STEPS = {"cpu": (2, 10), "cuda": (5, 50), "tiny": (1, 2)}  # (warm-up, timed) detection calls; "tiny": --tiny
PRECISIONS = {"fp32": "off", "bf16": "bf16"}  # name -> train.py's --amp value
N_SCORE_IMAGES = 4  # images scored in fp32 and bf16 for the score-difference check
PRIOR_IMAGES = 64  # generated images the bank-fit timing fits on (tiny: 4)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Benchmark DRAEM training and detection throughput.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("What to run")
    g.add_argument("--configs", default="cpu",
                   help=f"comma-separated sizes from {sorted(CONFIGS)}: "
                        + "; ".join(f"{k} = {v}" for k, v in CONFIGS.items()))
    g.add_argument("--precisions", default="fp32,bf16", help="comma-separated, from fp32, bf16")
    g.add_argument("--tiny", action="store_true",
                   help="smoke-test scale: the tiny config, 32 px synthesis of 4 images, one timed step")
    g.add_argument("--bs", type=positive_int, default=None,
                   help="override every config's training batch size (e.g. 1 to fit paper in minutes on a CPU)")
    g = p.add_argument_group("Data")
    g.add_argument("--anomaly_source_path", default=None,
                   help="folder of texture images (DTD); omit to use the built-in procedural textures")
    g.add_argument("--image_path", default=None,
                   help="image file for the read+resize timing; omit to time a generated 1024x1024 RGB PNG")
    g.add_argument("--recipe", choices=("ours", "paper"), default="ours", help="as train.py --recipe")
    g.add_argument("--synth_size", type=size_arg, default=256, help="image side for the synthesis timing")
    g.add_argument("--synth_bs", type=positive_int, default=32, help="batch for the synthesis timing")
    g = p.add_argument_group("Timing")
    g.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu",
                   help="where to run")
    g.add_argument("--threads", type=positive_int, default=2, help="torch.set_num_threads")
    g.add_argument("--iters", type=positive_int, default=None,
                   help="timed training steps (median reported); default per device and config: "
                        + ", ".join(f"{d}: {v}" for d, v in STEPS.items()))
    g.add_argument("--warmup", type=int, default=None, help="untimed warm-up steps (default: see --iters)")
    g.add_argument("--detect_iters", type=positive_int, default=None,
                   help=f"timed detection calls (default per device, and for --tiny: {DETECT_STEPS})")
    g.add_argument("--repeats", type=positive_int, default=3, help="synthesis timings (median reported)")
    g.add_argument("--seed", type=int, default=0, help="random seed")
    g.add_argument("--json", action="store_true", help="also print one JSON object as the last stdout line")
    args = p.parse_args(argv)
    if args.tiny:
        args.configs, args.synth_size, args.synth_bs, args.repeats = "tiny", 32, 4, 1
    for flag, what, known in (("configs", "config", CONFIGS), ("precisions", "precision", PRECISIONS)):
        names = [c.strip() for c in getattr(args, flag).split(",") if c.strip()]
        for c in names:
            if c not in known:
                p.error(f"argument --{flag}: unknown {what} {c!r}; choose from {sorted(known)}")
        setattr(args, flag, names)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("argument --device: CUDA is not available")
    if args.warmup is not None and args.warmup < 0:
        p.error(f"argument --warmup: must be >= 0, got {args.warmup}")
    return args


# -------------------------------------------------------------------------------------------- timing
def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device):
    """Seconds one call of fn() takes, queued GPU work included."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def interleaved_medians(fns, warmup, iters, device):
    """Median seconds per call of each fn, calling them in turn (warm-up rounds excluded)."""
    rounds = [[timed(fn, device) for fn in fns] for _ in range(warmup + iters)]
    return [statistics.median(column) for column in zip(*rounds[warmup:])]


def peak_memory_mb(device):
    """CUDA: peak allocated since the last reset; CPU: the process's max RSS so far (a high-water mark)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def reset_peak_memory(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


# -------------------------------------------------------------------------------------------- inputs
def smooth_images(n, size, generator):
    """n smooth random uint8 images (n, 3, size, size): stand-ins for utils.data_loader.load_images' cache."""
    low = torch.rand(n, 3, 8, 8, generator=generator)
    high = F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    return (high.clamp(0, 1) * 255).round().to(torch.uint8)


def write_test_image(folder, size, seed):
    """A size x size RGB PNG with smooth structure and sensor-like noise (so it does not compress to nothing)."""
    rng = np.random.default_rng(seed)
    img = cv2.resize(rng.random((16, 16, 3), dtype=np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    img = np.clip(img * 255 + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
    path = Path(folder) / f"bench_{size}.png"
    cv2.imwrite(str(path), img)
    return path


def texture_bank(args, size):
    return load_texture_bank(args.anomaly_source_path, size) if args.anomaly_source_path else None


# -------------------------------------------------------------------------------------------- benches
def synthesis_throughput(synth, batch, size, iters, device):
    """Samples/s of `synth` on random (batch, 3, size, size) images, warm-up call excluded; moves `synth` to device."""
    synth.to(device)
    generator = torch.Generator(device=device).manual_seed(0)
    images = torch.rand(batch, 3, size, size, generator=generator, device=device)
    synth(images, generator)
    seconds = timed(lambda: [synth(images, generator) for _ in range(iters)], device)
    return batch * iters / seconds


def bench_synthesis(args, device):
    """Median samples/s of the training synthesiser (utils.synthesis.make_synthesizer) at --synth_size/--synth_bs."""
    synth = make_synthesizer(args.recipe, texture_bank(args, args.synth_size), grayscale=False)
    runs = [synthesis_throughput(synth, args.synth_bs, args.synth_size, iters=2 if args.tiny else 3, device=device)
            for _ in range(args.repeats)]
    return statistics.median(runs)


def bench_train(model, cfg, synthesizer, amp_dtype, device, warmup, iters, seed):
    """Images/s of the training loop body (end to end) and of train_step on a pre-made batch (bare)."""
    bs = cfg["bs"]
    gen = torch.Generator().manual_seed(seed)
    cache = smooth_images(bs * 4, cfg["size"], gen)  # (N, 3, S, S) uint8, as utils.data_loader.load_images returns
    loader = DataLoader(TensorDataset(cache), batch_size=bs, shuffle=True, generator=gen, drop_last=True)
    optimizer, scheduler = make_optimizer(model, Config.lr, 1000)
    criterion = DraemLoss().to(device)
    synth_gen = torch.Generator(device=device).manual_seed(seed)

    def epochs():  # endless, reshuffled each pass as train.py's epochs are
        while True:
            for (batch,) in loader:
                yield prepare_batch(batch, device)  # as utils.training.engine.train_epoch

    batches = epochs()

    def step(batch, synthesize):  # no loss scaler: fp32 / bf16 need none; the engine reads the loss each step
        train_step(model, batch, synthesize, synth_gen, criterion, optimizer, amp_dtype, None)["loss"].item()

    def e2e():
        step(next(batches), synthesizer)
        scheduler.step()

    premade = synthesizer(prepare_batch(cache[:bs], device), synth_gen)  # synthesised once, outside timing

    def bare():
        step(premade["image"], lambda *_: premade)

    model.train()
    t_e2e, t_bare = interleaved_medians([e2e, bare], warmup, iters, device)
    return {"train_e2e_img_s": bs / t_e2e, "train_bare_img_s": bs / t_bare, "train_e2e_over_bare": t_bare / t_e2e}


def scoring(detector, image):
    """A call that scores one (3, H, W) image through Detector.predict and reads the score as detect.py does."""
    return lambda: float(detector.predict([image])["score"][0])


def bench_detect(model, size, amp_dtype, device, warmup, iters, seed):
    """ms/image of Detector.predict on a preprocessed (1, 3, S, S) CPU tensor vs a bare forward on the device; then
    tiles/s and ms per megapixel of Detector.predict on a wide (3, 2S, 8S) image at scale native (fewer calls)."""
    detector = Detector(model, {"config": {"size": size}, "calibration": {}}, device, amp_dtype)
    image = smooth_images(1, size, torch.Generator().manual_seed(seed)).float() / 255  # (1, 3, S, S)
    on_device = image.to(device)

    @torch.inference_mode()
    def bare():
        with autocast(device, amp_dtype):
            model(on_device)

    t_e2e, t_bare = interleaved_medians([scoring(detector, image[0]), bare], warmup, iters, device)
    tiled = Detector(model, {"config": {"size": size, "scale": "native"}, "calibration": {}}, device, amp_dtype)
    wide = smooth_images(1, 8 * size, torch.Generator().manual_seed(seed))[0, :, :2 * size].float() / 255
    (t,) = interleaved_medians([scoring(tiled, wide)], min(warmup, 1), max(1, iters // 4), device)
    return {"detect_e2e_ms": 1000 * t_e2e, "detect_bare_ms": 1000 * t_bare, "detect_over_bare": t_e2e / t_bare,
            "tiled_image": f"{8 * size}x{2 * size}", "tiles_per_s": count_tiles(2 * size, 8 * size, size) / t,
            "ms_per_megapixel": 1000 * t / (16 * size * size / 1e6)}


def bench_prior(model, cfg, device, warmup, iters, seed, n_images):
    """The feature prior: bank fit s per 1000 images, bank MB, detect ms with it vs DRAEM alone (fp32)."""
    images = smooth_images(n_images, cfg["size"], torch.Generator().manual_seed(seed)).float() / 255
    start = time.perf_counter()
    features = fit_prior(images.split(16), seed=seed, device=device)  # a bank of min(CORESET_SIZE, patches)
    fit_s = time.perf_counter() - start
    feature_s = timed(lambda: [features.features(batch.to(device)) for batch in images.split(16)], device)
    # features grow with the images; the coreset's global search runs over ~4 x CORESET_SIZE candidates whatever
    # their number (model/feature_prior.py greedy_coreset), so it counts once
    per_1000 = 1000 * feature_s / n_images + max(fit_s - feature_s, 0.0)
    tail = TailEvidence.fit(torch.rand(1000, generator=torch.Generator().manual_seed(seed)))
    meta = {"config": {"size": cfg["size"]}, "calibration": {}}
    alone, fused, image = Detector(model, meta, device), Detector(model, meta, device), images[0]
    fused.scorer.prior = PriorFusion(features, tail, tail)
    t_alone, t_fused = interleaved_medians([scoring(alone, image), scoring(fused, image)], warmup, iters, device)
    return {"prior_fit_s_per_1000": per_1000, "prior_fit_images": n_images,
            "prior_bank_mb": features.bank.numel() * 2 / 1e6, "prior_bank_rows": features.bank.shape[0],
            "prior_bank_mb_full": CORESET_SIZE * features.bank.shape[1] * 2 / 1e6, "prior_size": PRIOR_SIZE,
            "detect_alone_ms": 1000 * t_alone, "detect_prior_ms": 1000 * t_fused, "prior_over_alone": t_fused / t_alone}


def bench_default_detect(model, cfg, device, warmup, iters, path):
    """Detection of one image file (read, working shape, DRAEM, the feature prior, score), as detect.py scores it:
    at the default scale ("auto": the image at its own aspect, its area brought to the training images' working
    area; here trained on images of this file's size) against "square" (resized to --size, the prior at its square
    side), both with a full bank of random features (the search costs what a fitted bank's does); "auto" with the
    map's fine evidence and guided sharpening, as a pair that chose a fine weight above 0 shows its map."""
    config = Config.build("cpu")
    w, h = image_file_size(path)
    zoom = auto_zoom([(w, h)], cfg["size"], config.auto_sides)
    tail = TailEvidence.fit(torch.rand(1000, generator=torch.Generator().manual_seed(0)))
    bank = torch.randn(CORESET_SIZE, FEATURE_CHANNELS, generator=torch.Generator().manual_seed(0))
    backbone = load_backbone()
    detectors = {}
    for name, scale, prior in (("auto", {"scale": "auto", "scale_factor": zoom}, (config.prior_side, config.prior_area)),
                               ("square", {"scale": "square"}, (None, None))):
        meta = {"config": {"size": cfg["size"], "score_top_fraction": config.score_top_fraction,
                           "map_guide": config.map_guide, **scale},  # the map's sharpening: "square" has none
                "calibration": {}}
        det = Detector(model, meta, device)
        fine = None if scale["scale"] == "square" else FineEvidence(torch.zeros(16), torch.eye(16), 1.0, 0.5)
        # the fine evidence at the largest weight a pair chose (the demo's 0.5; at 0 it costs nothing)
        det.scorer.prior = PriorFusion(FeaturePrior(bank, backbone=backbone, side=prior[0], area=prior[1]), tail, tail,
                                       fine=fine).to(device)
        detectors[name] = det
    t_auto, t_square = interleaved_medians([lambda d=d: float(d.predict([d.read(path)], False)["score"][0])
                                            for d in detectors.values()], warmup, iters, device)
    shape = "x".join(str(v) for v in detectors["auto"].read(path).shape[:0:-1])
    return {"default_detect_image": f"{w}x{h}", "default_working_shape": shape, "default_detect_ms": 1000 * t_auto,
            "square_detect_ms": 1000 * t_square, "default_over_square": t_auto / t_square}


def bench_read(path, size, iters):
    """Median ms of read_image(path, size): decode + colour conversion + resize (one warm-up call)."""
    (t,) = interleaved_medians([lambda: read_image(path, size)], 1, iters, torch.device("cpu"))
    return 1000 * t


def max_score_difference(model, size, device, seed):
    """max |score fp32 - score bf16| over a few synthetic defect images, same weights, through Detector."""
    gen = torch.Generator().manual_seed(seed + 1)
    images = smooth_images(N_SCORE_IMAGES, size, gen).float() / 255
    synth = make_synthesizer("ours", None, grayscale=False, anomaly_prob=1.0)
    images = synth(images, gen)["augmented_image"]
    meta = {"config": {"size": size}, "calibration": {}}
    scores = [torch.stack(Detector(model, meta, device, dt).predict(list(images))["score"]).cpu()
              for dt in (None, torch.bfloat16)]
    return (scores[0] - scores[1]).abs().max().item()


def run_config(name, args, device, read_path):
    """Every measurement for one config, each precision starting from the same initial weights."""
    cfg = {**CONFIGS[name], "bs": args.bs or CONFIGS[name]["bs"]}
    warmup, iters = STEPS[device.type][name]
    warmup = warmup if args.warmup is None else args.warmup
    iters = args.iters or iters
    d_warmup, d_iters = DETECT_STEPS["tiny" if args.tiny else device.type]
    d_iters = args.detect_iters or d_iters

    seed_everything(args.seed)
    model = DRAEM(cfg["rec_base_width"], cfg["seg_base_width"]).apply(weights_init).to(device)
    initial = copy.deepcopy(model.state_dict())
    synthesizer = make_synthesizer(args.recipe, texture_bank(args, cfg["size"]), grayscale=False).to(device)
    out = {**cfg, "warmup": warmup, "iters": iters, "read_ms": bench_read(read_path, cfg["size"], d_iters)}
    for prec in args.precisions:
        log.info("%s %s: training (%d warm-up + %d timed steps of e2e and bare) ...", name, prec, warmup, iters)
        model.load_state_dict(initial)
        amp_dtype = resolve_amp(PRECISIONS[prec], device)
        reset_peak_memory(device)
        res = bench_train(model, cfg, synthesizer, amp_dtype, device, warmup, iters, args.seed)
        res["train_peak_mb"] = peak_memory_mb(device)
        log.info("%s %s: detection ...", name, prec)
        reset_peak_memory(device)
        res.update(bench_detect(model, cfg["size"], amp_dtype, device, d_warmup, d_iters, args.seed))
        res["detect_peak_mb"] = peak_memory_mb(device)
        out[prec] = res
    log.info("%s: feature prior (fit and detection, fp32) ...", name)
    model.load_state_dict(initial)
    out["prior"] = bench_prior(model, cfg, device, d_warmup, d_iters, args.seed, 4 if args.tiny else PRIOR_IMAGES)
    log.info("%s: detection of %s at the default scale and at square ...", name, read_path.name)
    out["default"] = bench_default_detect(model, cfg, device, d_warmup, d_iters, read_path)
    if "fp32" in out and "bf16" in out:
        out["bf16_train_speedup"] = out["bf16"]["train_e2e_img_s"] / out["fp32"]["train_e2e_img_s"]
        out["bf16_detect_speedup"] = out["fp32"]["detect_e2e_ms"] / out["bf16"]["detect_e2e_ms"]
        out["max_score_diff_bf16"] = max_score_difference(model, cfg["size"], device, args.seed)
    return out


# -------------------------------------------------------------------------------------------- report
def report_table(result):
    lines = [f"device {result['device']}, {result['threads']} threads, load average {result['loadavg']}, "
             f"native bf16: {result['native_bf16']}",
             f"synthesis ({result['texture_source']}): {result['synth_samples_per_s']:.1f} samples/s "
             f"at {result['synth_size']} px, batch {result['synth_bs']}",
             f"read_image (decode + resize) of {result['read_image']}"]
    head = (f"{'config':<7}{'prec':<6}{'train img/s':>12}{'bare img/s':>11}{'e2e/bare':>9}"
            f"{'detect ms':>10}{'bare ms':>9}{'det/bare':>9}{'read ms':>8}{'peak MB':>9}")
    lines += [head, "-" * len(head)]
    for name, c in result["configs"].items():
        for prec in result["precisions"]:
            r = c[prec]
            lines.append(f"{name:<7}{prec:<6}{r['train_e2e_img_s']:>12.3f}{r['train_bare_img_s']:>11.3f}"
                         f"{r['train_e2e_over_bare']:>9.3f}{r['detect_e2e_ms']:>10.1f}{r['detect_bare_ms']:>9.1f}"
                         f"{r['detect_over_bare']:>9.3f}{c['read_ms']:>8.1f}"
                         f"{max(r['train_peak_mb'], r['detect_peak_mb']):>9.0f}")
        lines += ["{name:<7}{prec:<6}tiled detection of a {tiled_image} image (scale native): {tiles_per_s:.1f} "
                  "tiles/s, {ms_per_megapixel:.0f} ms per megapixel".format(name=name, prec=prec, **c[prec])
                  for prec in result["precisions"]]
        bf16 = (f"; bf16 speed-up train x{c['bf16_train_speedup']:.2f}, detect x{c['bf16_detect_speedup']:.2f}, "
                f"max |score fp32 - bf16| {c['max_score_diff_bf16']:.5f}" if "bf16_train_speedup" in c else "")
        lines.append(f"{name:<7}size {c['size']}, widths {c['rec_base_width']}/{c['seg_base_width']}, bs {c['bs']}, "
                     f"{c['warmup']} warm-up + {c['iters']} timed steps{bf16}")
        lines.append("{name:<7}feature prior ({prior_size} px, fp32): detect {detect_prior_ms:.1f} ms vs "
                     "{detect_alone_ms:.1f} ms DRAEM alone = x{prior_over_alone:.2f}; bank fit "
                     "{prior_fit_s_per_1000:.1f} s per 1000 images (from {prior_fit_images}), bank "
                     "{prior_bank_mb:.2f} MB ({prior_bank_rows} rows; {prior_bank_mb_full:.2f} MB full)"
                     .format(name=name, **c["prior"]))
        lines.append("{name:<7}detection of a {default_detect_image} file, read and scored as detect.py does (fp32, "
                     "prior): default scale (working shape {default_working_shape}) {default_detect_ms:.1f} ms, "
                     "square {square_detect_ms:.1f} ms = x{default_over_square:.2f}".format(name=name, **c["default"]))
    if result["device"] == "cpu":
        lines.append("peak MB on CPU: the process's max RSS so far (cumulative over the rows above)")
    return "\n".join(lines)


def summary(configs, precisions):
    """The headline keys, from the cpu config when it ran (else the first one)."""
    main_cfg = configs.get("cpu") or next(iter(configs.values()))
    first, prior, default = main_cfg[precisions[0]], main_cfg["prior"], main_cfg["default"]
    return {"train_e2e_over_bare": first["train_e2e_over_bare"], "detect_over_bare": first["detect_over_bare"],
            "bf16_speedup": main_cfg.get("bf16_train_speedup"), "prior_over_alone": prior["prior_over_alone"],
            "prior_fit_s_per_1000": prior["prior_fit_s_per_1000"], "default_detect_ms": default["default_detect_ms"],
            "default_over_square": default["default_over_square"]}


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    load_before = os.getloadavg()
    log.info("device %s, %d threads, configs %s, precisions %s", device, args.threads, ",".join(args.configs),
             ",".join(args.precisions))
    with tempfile.TemporaryDirectory() as tmp:
        read_path = Path(args.image_path) if args.image_path else write_test_image(tmp, 64 if args.tiny else 1024,
                                                                                  args.seed)
        width, height = image_file_size(read_path)  # through the one reader: a FIFO given is never opened
        log.info("synthesis ...")
        result = {"device": str(device), "threads": args.threads, "native_bf16": cpu_has_native_bf16(),
                  "texture_source": args.anomaly_source_path or "procedural textures",
                  "synth_size": args.synth_size, "synth_bs": args.synth_bs,
                  "synth_samples_per_s": bench_synthesis(args, device),
                  "read_image": f"{'a generated ' if not args.image_path else ''}{width}x{height} "
                                f"{read_path.suffix[1:]}", "precisions": args.precisions,
                  "configs": {name: run_config(name, args, device, read_path) for name in args.configs}}
    result["loadavg"] = "start {:.2f} {:.2f} {:.2f}, end {:.2f} {:.2f} {:.2f}".format(*load_before, *os.getloadavg())
    result.update(summary(result["configs"], args.precisions))
    print(report_table(result))
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
