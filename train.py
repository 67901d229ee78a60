"""Train DRAEM on a folder of good images.

    python train.py                                   # built-in demo: generate, train (CPU minutes), evaluate
    python train.py --data_path path/to/train/good --anomaly_source_path path/to/dtd/images
    python train.py --gpu_id 0 --obj_id -1 --lr 0.0001 --bs 8 --epochs 700 --data_path ./datasets/mvtec/ \
        --anomaly_source_path ./datasets/dtd/images/ --checkpoint_path ./checkpoints/ --log_path ./logs/
    torchrun --nproc_per_node=4 train.py ...          # several GPUs (DistributedDataParallel)

Writes the checkpoint pair DRAEM_test_{lr}_{epochs}_bs{bs}_{obj}_.pt / ..._seg.pt (best by synthetic
validation), the pair ..._last.pt / ..._last_seg.pt, a resumable state ..._resume.pt, and a run folder of logs.
This file holds the flags, the preset resolution and main; the run itself is utils/engine.py.
"""
import argparse
import contextlib
import logging
import sys
from pathlib import Path

import torch.distributed as dist

from utils.calibration import add_target_flag
from utils.checkpoint import base_model_name
from utils.data_loader import resolve_classes
from utils.demo_data import DEMO_ROOT, make_demo_dataset
from utils.engine import LR, OURS_JITTER, OURS_TOP_FRACTION, PRESETS, Diverged, train_class
from utils.evaluation import evaluate_class, results_text
from utils.image_size import add_max_pixels_flag, set_max_pixels
from utils.inference import Detector
from utils.jitter import parse_kinds
from utils.lock import hold_checkpoint_names
from utils.outputs import check_output_dir
from utils.runtime import (AMP_CHOICES, UsageError, distributed_env, fraction, init_distributed, positive_float,
                           non_negative_int, positive_int, probability, report_error, resolve_amp, select_device,
                           size_arg)
from utils.signals import Interrupted, StopOnSignal
from utils.tiling import SCALE_HELP, SQUARE, scale_arg

log = logging.getLogger("train")


def jitter_kinds(s):
    try:
        return parse_kinds(s)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_quality_flags(p):
    """The detection-quality levers of README "How ours differs from the paper" (issue 13's ablation)."""
    g = p.add_argument_group("Detection quality (see the README's ablation)")
    g.add_argument("--jitter", type=jitter_kinds, default=None,
                   help="normal variation of whole good images, input and target alike (utils/jitter.py): none, "
                        "photo (brightness,contrast,gamma,blur,noise), geo (flip,rot90), all, or a comma list. "
                        f"None = {OURS_JITTER} with --recipe ours, none with --recipe paper")
    g.add_argument("--score_top_fraction", type=fraction, default=None,
                   help="image score: 0 = max of the mean-filtered map (the authors'); > 0 = mean of this share of "
                        "the hottest pixels (model/scoring.py); stored in the checkpoint. None = "
                        f"{OURS_TOP_FRACTION} with --recipe ours, 0 with --recipe paper")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Train DRAEM (reconstructive + discriminative network) on good images.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("Data")
    g.add_argument("--data_path", default=None,
                   help="folder of good images (e.g. path/to/train/good), an MVTec-style class folder, or a root "
                        "holding class folders. Omit to run the built-in demo (generated under data/demo)")
    g.add_argument("--obj_id", type=int, default=-1,
                   help="with a root of class folders: index into the sorted class names, -1 trains every class")
    g.add_argument("--anomaly_source_path", default=None,
                   help="folder of texture images pasted as simulated defects (DTD in the paper); "
                        "omit to use built-in procedural textures")
    g.add_argument("--size", type=size_arg, default=None, help="training image size, a multiple of 32; "
                   "None = from --preset")
    g.add_argument("--scale", type=scale_arg, default=SQUARE, help=SCALE_HELP)
    g.add_argument("--grayscale", choices=("auto", "on", "off"), default="auto",
                   help="synthesise grey anomalies; auto = when the training images are grayscale")
    g.add_argument("--recipe", choices=("ours", "paper"), default="ours",
                   help="anomaly simulation recipe: 'paper' is DRAEM's as published; 'ours' adds what the "
                        "README's results table measures")
    g.add_argument("--val_fraction", type=fraction, default=0.1, help="share of good images held out, >= min(30, n/3)")
    add_target_flag(g, ", estimated on the held-out images")
    g.add_argument("--workers", type=non_negative_int, default=0, help="DataLoader workers to decode images at start")
    add_max_pixels_flag(g, "skip training")
    g = p.add_argument_group("Model")
    g.add_argument("--preset", choices=("auto", "paper", "cpu"), default="auto",
                   help="sizes: paper = 256 px, widths 128/64, 700 epochs; cpu = the measured CPU preset "
                        f"{PRESETS['cpu']}; auto = paper on CUDA, cpu otherwise")
    g.add_argument("--rec_base_width", type=positive_int, default=None,
                   help="reconstructive network width (paper 128; None = from --preset)")
    g.add_argument("--seg_base_width", type=positive_int, default=None,
                   help="discriminative network width (paper 64; None = from --preset)")
    g = p.add_argument_group("Optimisation")
    g.add_argument("--lr", type=positive_float, default=LR, help="Adam learning rate")
    g.add_argument("--bs", type=positive_int, default=None, help="batch size; None = from --preset")
    g.add_argument("--epochs", type=positive_int, default=None,
                   help="passes over the training images; lr x0.2 at 80%% and 90%%; None = from --preset")
    g.add_argument("--max_minutes", type=positive_float, default=None,
                   help="stop after this many minutes of training (the schedule still assumes --epochs)")
    g.add_argument("--amp", choices=AMP_CHOICES, default="auto",
                   help="mixed precision: auto = bf16 on CPUs with native bf16 and on GPUs, else fp32")
    g.add_argument("--channels_last", action="store_true", help="channels_last memory format")
    g.add_argument("--seed", type=int, default=0, help="random seed (data order, synthesis, init)")
    g = p.add_argument_group("Output")
    g.add_argument("--checkpoint_path", default="./checkpoints/", help="folder for the checkpoint pairs")
    g.add_argument("--log_path", default="./logs/", help="folder for the run folders (config, CSV, plots)")
    g.add_argument("--val_every", type=non_negative_int, default=0,
                   help="validate and checkpoint every N steps (0: at the end of each epoch)")
    g.add_argument("--resume", action="store_true", help="continue from the _resume.pt state of the same run")
    g.add_argument("--stop_after_epoch", type=positive_int, default=None,
                   help="end this run after N epochs, keeping the resumable state (split long runs)")
    g.add_argument("--gpu_id", type=int, default=0, help="CUDA device index (CPU when CUDA is absent; -1 forces CPU)")
    add_quality_flags(p)
    return p.parse_args(argv)


def resolve_settings(args, device):
    """(preset name, settings): a copy of the parsed flags with the preset's values where a flag was left at None
    (explicit flags win) and, without --data_path, the generated demo folder. `args` itself is left as parsed.

    The preset: --preset, where auto = paper on a CUDA GPU and cpu otherwise; the demo always uses cpu.
    """
    if args.data_path is None:
        name = "cpu"
    elif args.preset == "auto":
        name = "paper" if device.type == "cuda" else "cpu"
    else:
        name = args.preset
    filled = {k: v for k, v in PRESETS[name].items() if getattr(args, k) is None}
    paper = args.recipe == "paper"  # the published method stays as published
    if args.score_top_fraction is None:
        filled["score_top_fraction"] = 0.0 if paper else OURS_TOP_FRACTION
    if args.jitter is None:
        filled["jitter"] = () if paper else parse_kinds(OURS_JITTER)
    if args.data_path is None:
        filled["data_path"] = str(make_demo_dataset(DEMO_ROOT))
    return name, argparse.Namespace(**{**vars(args), **filled})


def run_demo_evaluation(settings, base, class_dir):
    """The demo's test split through the freshly trained pair; prints the metrics table."""
    device = select_device(settings.gpu_id)
    detector = Detector.from_checkpoint(settings.checkpoint_path, base, device, resolve_amp(settings.amp, device))
    results = evaluate_class(detector, class_dir, bs=settings.bs)
    print(results_text(results, title=f"demo test split ({class_dir})"))
    return results


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    command = ["train.py", *(sys.argv[1:] if argv is None else argv)]
    set_max_pixels(args.max_pixels)
    try:
        with StopOnSignal(armed=False) as stop:  # armed by the epoch loop: Ctrl-C / SIGTERM stop after a step
            run(args, command, stop)
    except (UsageError, OSError, Diverged) as e:  # 2: bad input; 1: a failed write (checkpoints stay whole), nan
        return report_error("train.py", e)
    except Interrupted as e:
        print(f"train.py: {e}", file=sys.stderr)
        return e.exit_code
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


def run(args, command, stop):
    """Check the output folders, hold the checkpoint names, train each class (then evaluate the demo)."""
    device = init_distributed(args.gpu_id)
    rank = distributed_env()[0]
    check_output_dir(args.checkpoint_path, "--checkpoint_path")  # before any work: nothing is made on failure
    check_output_dir(args.log_path, "--log_path")
    preset, settings = resolve_settings(args, device)
    if rank == 0:
        log.info("device: %s, preset: %s (size %d, widths %d/%d, bs %d, epochs %d)", device, preset,
                 settings.size, settings.rec_base_width, settings.seg_base_width, settings.bs, settings.epochs)
    if args.anomaly_source_path is not None and not Path(args.anomaly_source_path).is_dir():
        raise UsageError(f"--anomaly_source_path {args.anomaly_source_path} is not a folder")
    classes = resolve_classes(settings.data_path, settings.obj_id)
    names = [base_model_name(settings.lr, settings.epochs, settings.bs, obj_name) for obj_name, _ in classes]
    held = hold_checkpoint_names(settings.checkpoint_path, names, settings.log_path) if rank == 0 \
        else contextlib.nullcontext()  # other DDP ranks write nothing
    with held:
        for obj_name, good_dir in classes:
            base, _ = train_class(settings, obj_name, good_dir, device, preset, command, stop)
        if args.data_path is None and rank == 0:
            run_demo_evaluation(settings, base, Path(settings.data_path))


if __name__ == "__main__":
    sys.exit(main())
