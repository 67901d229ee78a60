"""Train DRAEM on a folder of good images.

    python train.py                                   # built-in demo: generate, train (CPU minutes), evaluate
    python train.py --data_path path/to/train/good --anomaly_source_path path/to/dtd/images
    python train.py --gpu_id 0 --obj_id -1 --lr 0.0001 --bs 8 --epochs 700 --data_path ./datasets/mvtec/ \
        --anomaly_source_path ./datasets/dtd/images/ --checkpoint_path ./checkpoints/ --log_path ./logs/
    torchrun --nproc_per_node=4 train.py ...          # several GPUs (DistributedDataParallel)
    python train.py --add_good line3/ok --base_model_name DRAEM_test_0.0001_20_bs8_part_   # teach, no training

Writes the checkpoint pair DRAEM_test_{lr}_{epochs}_bs{bs}_{obj}_.pt / ..._seg.pt (best by synthetic
validation), the pair ..._last.pt / ..._last_seg.pt, a resumable state ..._resume.pt, and a run folder of logs.
--add_good teaches a trained pair confirmed-good images in seconds (utils/training/teach.py): a new pair
<name>taught<k>_. This file holds the flags and main; the defaults are utils/config.py, the run itself is
utils/training/engine.py.
"""
import time

STARTED = time.monotonic()  # --max_minutes counts from here: the imports below take seconds of the user's minutes

from utils.cli import (AMP_CHOICES, SCALE_HELP, ScriptExit, add_max_pixels_flag, add_target_flag,
                       exit_quietly_on_signals, fraction, given, positive_float, positive_int, scale_arg, size_arg)
from utils.runtime import FairThreads, UsageError, distributed_env, init_distributed, select_device

exit_quietly_on_signals("train.py", __name__)  # a signal during the imports below: one line

import argparse
import contextlib
import logging
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from utils.config import AUTO, FIELDS, PHOTOMETRIC, PRESETS, RECIPES, Config
from utils.data_loader import resolve_classes
from utils.evaluation.report import evaluate_class, results_text
from utils.inference.detector import Detector
from utils.storage.locks import hold_checkpoint_names
from utils.storage.output_rules import check_output_dir, check_output_file, refuse_inside
from utils.storage.pairs import base_model_name, newest_complete_pair
from utils.synthesis.demo_data import DEMO_ROOT, make_demo_dataset
from utils.synthesis.simulation import parse_kinds
from utils.training.engine import Diverged, preview_synthesis, train_class
from utils.training.teach import Lesson, teach

log = logging.getLogger("train")

DEMO_MINUTES = 2.0  # `python train.py` (the built-in demo) trains this long unless --epochs or --max_minutes is given


def jitter_kinds(s):
    try:
        return parse_kinds(s)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def resolve_preset(args):
    """The preset a run uses: --preset auto is paper on a CUDA GPU and cpu otherwise; the demo always uses cpu."""
    if args.data_path is None:
        return "cpu"
    if args.preset == AUTO:
        return "paper" if torch.cuda.is_available() and args.gpu_id >= 0 else "cpu"
    return args.preset


def add_data_flags(p, d):
    g = p.add_argument_group("Data")
    g.add_argument("--data_path", default=d.data_path,
                   help="folder of good images (e.g. path/to/train/good), an MVTec-style class folder, or a root "
                        "holding class folders. Omit to run the built-in demo (generated under data/demo; it trains "
                        f"for {DEMO_MINUTES:g} minutes unless --epochs or --max_minutes is given)")
    g.add_argument("--obj_id", type=int, default=d.obj_id,
                   help="with a root of class folders: index into the sorted class names, -1 trains every class")
    g.add_argument("--anomaly_source_path", default=d.anomaly_source_path,
                   help="folder of texture images pasted as simulated defects (DTD in the paper); "
                        "omit to use built-in procedural textures")
    g.add_argument("--size", type=size_arg, default=d.size, help="training image size, a multiple of 32")
    g.add_argument("--scale", type=scale_arg, default=d.scale, help=SCALE_HELP)
    g.add_argument("--val_fraction", type=fraction, default=d.val_fraction,
                   help="share of good images held out, >= min(30, n/3)")
    add_target_flag(g, ", estimated on the held-out images")


def add_model_flags(p, d):
    g = p.add_argument_group("Model and recipe (defaults shown: those of this --preset and --recipe)")
    g.add_argument("--preset", choices=(AUTO, *PRESETS), default=AUTO,
                   help=f"sizes: paper = {PRESETS['paper']}; cpu = the measured CPU preset {PRESETS['cpu']}; "
                        "auto = paper on CUDA, cpu otherwise (and for the demo)")
    g.add_argument("--recipe", choices=tuple(RECIPES), default=d.recipe,
                   help="'paper' is DRAEM as published; 'ours' adds what docs/training.md lists "
                        "(utils/config.py RECIPES)")
    g.add_argument("--rec_base_width", type=positive_int, default=d.rec_base_width,
                   help="reconstructive network width (paper 128)")
    g.add_argument("--seg_base_width", type=positive_int, default=d.seg_base_width,
                   help="discriminative network width (paper 64)")
    jitter = {(): "none", PHOTOMETRIC: "photo"}.get(d.jitter, ",".join(d.jitter))
    g.add_argument("--jitter", type=jitter_kinds, default=jitter,
                   help="normal variation of whole good images, input and target alike: none, photo "
                        "(brightness,contrast,gamma,blur,noise), geo (flip,rot90), all, or a comma list")
    g.add_argument("--prior", choices=("features", "none"), default=d.prior,
                   help="features: ImageNet features (EfficientNet-Lite0, from its wheel) of the training images "
                        "as a memory bank, their novelty fused with DRAEM's map; none: DRAEM alone")


def add_optimisation_flags(p, d):
    g = p.add_argument_group("Optimisation")
    g.add_argument("--lr", type=positive_float, default=d.lr, help="Adam learning rate")
    g.add_argument("--bs", type=positive_int, default=d.bs, help="batch size")
    # SUPPRESS: absent unless given, so that --max_minutes without --epochs can fill its minutes
    g.add_argument("--epochs", type=positive_int, default=argparse.SUPPRESS,
                   help=f"passes over the training images; lr x0.2 at 80%% and 90%% (default: {d.epochs}; with "
                        "--max_minutes: as many as fit). The checkpoint pair is named after it")
    g.add_argument("--max_minutes", type=positive_float, default=d.max_minutes,
                   help="the run's length in minutes (decoding, bank fit and validations included): as many "
                        "steps as fit, at most --epochs when given, with the lr decays at 80%% and 90%% of them")
    g.add_argument("--amp", choices=AMP_CHOICES, default=d.amp,
                   help="mixed precision: auto = bf16 on CPUs with native bf16 and on GPUs, else fp32")
    g.add_argument("--seed", type=int, default=d.seed, help="random seed (data order, synthesis, init)")


def add_output_flags(p, d):
    g = p.add_argument_group("Output")
    g.add_argument("--checkpoint_path", default=d.checkpoint_path, help="folder for the checkpoint pairs")
    g.add_argument("--log_path", default=d.log_path, help="folder for the run folders (config, CSV, plots)")
    g.add_argument("--resume", action="store_true", help="continue from the _resume.pt state of the same run")
    g.add_argument("--stop_after_epoch", type=positive_int, default=d.stop_after_epoch,
                   help="end this run after N epochs, keeping the resumable state (split long runs)")
    g.add_argument("--preview", default=d.preview, metavar="FILE",
                   help="write a picture of training samples with simulated defects (clean / with defects / mask) "
                        "to FILE, as this run would make them, and exit without training")
    g.add_argument("--gpu_id", type=int, default=d.gpu_id,
                   help="CUDA device index (CPU when CUDA is absent; -1 forces CPU)")


TEACH_FLAG = "--add_good"


def add_teach_flags(g):
    g.add_argument(TEACH_FLAG, default=None, metavar="FOLDER",
                   help="teach a trained pair this folder of confirmed-good images (any depth) instead of training: "
                        "their features join its memory bank and the threshold is recalibrated, in seconds; writes "
                        "a new pair <name>taught<k>_ (docs/thresholds.md). Its flags: train.py --add_good X --help")
    g.add_argument("--base_model_name", default=None,
                   help="with --add_good: the pair to teach; omit to use the newest complete pair in --checkpoint_path")


def parse_teach_args(argv):
    """train.py --add_good FOLDER [--base_model_name NAME]: the teaching's own flags (others are refused)."""
    d = Config()
    p = argparse.ArgumentParser(prog="train.py", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                description="Teach a trained pair confirmed-good images, no training "
                                            "(utils/training/teach.py, docs/thresholds.md)")
    add_teach_flags(p)
    p.add_argument("--checkpoint_path", default=d.checkpoint_path, help="folder of the pair; the new pair goes there")
    p.add_argument("--log_path", default=d.log_path, help="folder for the teaching's run folder")
    add_target_flag(p, ", on the held-out and the new images")
    p.add_argument("--gpu_id", type=int, default=d.gpu_id, help="CUDA device index (CPU when CUDA is absent)")
    add_max_pixels_flag(p)
    return p.parse_args(argv)


def teach_pair(args, command, stop):
    """Check the output folders, find the pair, teach it (utils/training/teach.py); the new pair's name. stop: a
    signal ends the teaching at its next step."""
    check_output_dir(args.checkpoint_path, "--checkpoint_path")
    check_output_dir(args.log_path, "--log_path")
    for out in ("checkpoint_path", "log_path"):  # the taught pair and its record never join the images taught
        refuse_inside(getattr(args, out), args.add_good, f"--{out}", "--add_good")
    base = args.base_model_name or newest_complete_pair(args.checkpoint_path)
    device = select_device(args.gpu_id)
    return teach(Lesson(args.checkpoint_path, base, args.add_good, args.log_path, args.target_false_reject,
                        str(device), args.max_pixels, argv=tuple(command), stop=stop))


def build_parser(d, add_help=True):
    """train.py's flags, their defaults from the Config `d` (and --add_good's two, which train nothing)."""
    p = argparse.ArgumentParser(description="Train DRAEM (reconstructive + discriminative network) on good images.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter, add_help=add_help)
    for add in (add_data_flags, add_model_flags, add_optimisation_flags, add_output_flags):
        add(p, d)
    add_teach_flags(p.add_argument_group("Teaching a trained pair (no training)"))
    return p


def parse_args(argv=None):
    """The flags as a Config: the preset's and recipe's values (utils/config.py), overridden by the flags given.
    The flags are read twice: first for the preset and recipe, whose values are then the defaults --help shows."""
    argv = sys.argv[1:] if argv is None else list(argv)
    first = build_parser(Config(), add_help=False).parse_known_args(argv)[0]
    preset = resolve_preset(first)
    parser = build_parser(Config.build(preset, first.recipe))
    args = parser.parse_args(argv)
    if args.base_model_name is not None and args.add_good is None:
        parser.error("argument --base_model_name: only with --add_good (the pair to teach)")
    if args.data_path is None and args.max_minutes is None and "epochs" not in vars(args):
        args.max_minutes = DEMO_MINUTES  # the quick start: the same minutes on any machine
    fill_budget = args.max_minutes is not None and "epochs" not in vars(args)  # the minutes alone end the run
    return Config.build(preset, args.recipe, fill_budget=fill_budget,
                        **{k: v for k, v in vars(args).items() if k in FIELDS and k not in ("preset", "recipe")})


def run_demo_evaluation(settings, base, class_dir):
    """The demo's test split through the freshly trained pair; prints the metrics table."""
    device = select_device(settings.gpu_id)
    # fp32, as detect.py scores by default and as the threshold was calibrated (the fused map's DRAEM tail table
    # is fitted on fp32 maps)
    detector = Detector.from_checkpoint(settings.checkpoint_path, base, device, None, bs=settings.bs)
    results = evaluate_class(detector, class_dir)
    print(results_text(results, title=f"demo test split ({class_dir})"))
    return results


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    argv = sys.argv[1:] if argv is None else list(argv)
    command = ["train.py", *argv]
    if given(argv, TEACH_FLAG):
        args = parse_teach_args(argv)
        with ScriptExit("train.py", (UsageError, OSError), armed=True) as outcome:  # signals: between its steps
            teach_pair(args, command, outcome.stop)
        return outcome.code
    cfg = parse_args(argv)
    try:  # 2: bad input; 1: a failed write (checkpoints stay whole), nan; 130/143: a signal (the epoch loop arms
        # the stop: Ctrl-C / SIGTERM stop after a step)
        with ScriptExit("train.py", (UsageError, OSError, Diverged)) as outcome:
            run(cfg, command, outcome.stop)
        return outcome.code
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run(cfg, command, stop):
    """Check the output folders, hold the checkpoint names, train each class (then evaluate the demo)."""
    device = init_distributed(cfg.gpu_id)
    rank = distributed_env()[0]
    check_output_dir(cfg.checkpoint_path, "--checkpoint_path")  # before any work: nothing is made on failure
    check_output_dir(cfg.log_path, "--log_path")
    demo = cfg.data_path is None
    if demo:
        cfg.data_path = str(make_demo_dataset(DEMO_ROOT))
    if rank == 0:
        epochs = f"as many epochs as fit in {cfg.max_minutes:g} minutes" if cfg.fill_budget else f"epochs {cfg.epochs}"
        log.info("device: %s, preset: %s (size %d, widths %d/%d, bs %d, %s)", device, cfg.preset,
                 cfg.size, cfg.rec_base_width, cfg.seg_base_width, cfg.bs, epochs)
    if cfg.anomaly_source_path is not None and not Path(cfg.anomaly_source_path).is_dir():
        raise UsageError(f"--anomaly_source_path {cfg.anomaly_source_path} is not a folder")
    for out in ("checkpoint_path", "log_path", "preview"):  # plots and pictures there would join the training images
        for src in ("data_path", "anomaly_source_path"):
            if getattr(cfg, src) is not None and getattr(cfg, out) is not None:
                refuse_inside(getattr(cfg, out), getattr(cfg, src), f"--{out}", f"--{src}")
    classes = resolve_classes(cfg.data_path, cfg.obj_id)
    if cfg.preview:
        check_output_file(cfg.preview, "--preview")
        return preview_synthesis(cfg, classes[0][1], Path(cfg.preview), device=device)
    names = [base_model_name(cfg.lr, cfg.epochs, cfg.bs, obj_name) for obj_name, _ in classes]
    held = hold_checkpoint_names(cfg.checkpoint_path, names, cfg.log_path) if rank == 0 \
        else contextlib.nullcontext()  # other DDP ranks write nothing
    threads = FairThreads() if device.type == "cpu" else None  # the cores other programs leave free
    with held, contextlib.ExitStack() as restore:
        if threads is not None:
            restore.callback(threads.restore)  # the process goes on (a test): its threads as they were
        for i, (obj_name, good_dir) in enumerate(classes):  # the first class's minutes include the imports
            base, _ = train_class(cfg, obj_name, good_dir, device, command, stop, threads,
                                  started=STARTED if i == 0 else None)
        if demo and rank == 0:
            run_demo_evaluation(cfg, base, Path(cfg.data_path))


if __name__ == "__main__":
    sys.exit(main())
