"""Train DRAEM on a folder of good images.

    python train.py                                   # built-in demo: generate, train (CPU minutes), evaluate
    python train.py --data_path path/to/train/good --anomaly_source_path path/to/dtd/images
    python train.py --gpu_id 0 --obj_id -1 --lr 0.0001 --bs 8 --epochs 700 --data_path ./datasets/mvtec/ \
        --anomaly_source_path ./datasets/dtd/images/ --checkpoint_path ./checkpoints/ --log_path ./logs/
    torchrun --nproc_per_node=4 train.py ...          # several GPUs (DistributedDataParallel)

Writes the checkpoint pair DRAEM_test_{lr}_{epochs}_bs{bs}_{obj}_.pt / ..._seg.pt (best by synthetic
validation), the pair ..._last.pt / ..._last_seg.pt, a resumable state ..._resume.pt, and a run folder of logs.
"""
import argparse
import contextlib
import logging
import math
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
from tqdm import tqdm

from model import DRAEM, weights_init
from model.scoring import score_kernel
from utils.checkpoint import atomic_save, base_model_name, safe_load, save_pair
from utils.data_loader import is_grayscale, list_images, read_image
from utils.inference import autocast, predict
from utils.loss import DraemLoss
from utils.metrics import image_auroc, pixel_ap
from utils.image_size import DEFAULT_MAX_PIXELS, set_max_pixels
from utils.lock import hold_checkpoint_names
from utils.outputs import check_output_dir
from utils.runtime import (UsageError, distributed_env, probability, resolve_amp, seed_everything, seed_worker,
                           select_device)
from utils.signals import Interrupted, StopOnSignal
from utils.synthesis import load_texture_bank, make_synthesizer
from utils.training_logger import TrainingLogger

log = logging.getLogger("train")

# Size presets. Explicit flags win over a preset. "auto" = paper on a CUDA GPU, cpu otherwise.
PRESETS = {
    "paper": dict(size=256, rec_base_width=128, seg_base_width=64, bs=8, epochs=700),
    "cpu": dict(size=128, rec_base_width=16, seg_base_width=8, bs=8, epochs=20),  # README: "CPU preset"
    "demo": dict(size=128, rec_base_width=16, seg_base_width=8, bs=8, epochs=20),
}
DEMO_ROOT = Path("data") / "demo"
VAL_SEED = 1234  # the synthetic validation set is the same in every run


def positive_int(s):
    v = int(s)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {s}")
    return v


def size_arg(s):
    v = positive_int(s)
    if v % 32:
        raise argparse.ArgumentTypeError(f"must be a multiple of 32 (the U-Net pools 5 times), got {s}")
    return v


def positive_float(s):
    v = float(s)
    if not v > 0 or not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {s}")
    return v


def fraction(s):
    v = float(s)
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {s}")
    return v


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
    g.add_argument("--grayscale", choices=("auto", "on", "off"), default="auto",
                   help="synthesise grey anomalies; auto = when the training images are grayscale")
    g.add_argument("--recipe", choices=("ours", "paper"), default="ours",
                   help="anomaly simulation recipe: 'paper' is DRAEM's as published; 'ours' adds what the "
                        "README's results table measures")
    g.add_argument("--self_texture_prob", type=probability, default=0.0,
                   help="recipe ours: share of simulated defects textured with the batch's own (augmented) good "
                        "images instead of --anomaly_source_path textures")
    g.add_argument("--val_fraction", type=fraction, default=0.1,
                   help="share of good images held out for synthetic validation and threshold calibration")
    g.add_argument("--workers", type=int, default=0, help="DataLoader workers for decoding images once at start")
    g.add_argument("--max_pixels", type=positive_int, default=DEFAULT_MAX_PIXELS,
                   help="skip training images with more pixels than this (read from the header, before decoding)")
    g = p.add_argument_group("Model")
    g.add_argument("--preset", choices=("auto", "paper", "cpu"), default="auto",
                   help="sizes: paper = 256 px, widths 128/64, 700 epochs; cpu = the measured CPU preset "
                        f"{PRESETS['cpu']}; auto = paper on CUDA, cpu otherwise")
    g.add_argument("--rec_base_width", type=positive_int, default=None,
                   help="reconstructive network width (paper 128; None = from --preset)")
    g.add_argument("--seg_base_width", type=positive_int, default=None,
                   help="discriminative network width (paper 64; None = from --preset)")
    g = p.add_argument_group("Optimisation")
    g.add_argument("--lr", type=positive_float, default=0.0001, help="Adam learning rate")
    g.add_argument("--bs", type=positive_int, default=None, help="batch size; None = from --preset")
    g.add_argument("--epochs", type=positive_int, default=None,
                   help="passes over the training images; lr x0.2 at 80%% and 90%%; None = from --preset")
    g.add_argument("--max_minutes", type=positive_float, default=None,
                   help="stop after this many minutes of training (the schedule still assumes --epochs)")
    g.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"), default="auto",
                   help="mixed precision: auto = bf16 on CPUs with native bf16 and on GPUs, else fp32")
    g.add_argument("--channels_last", action="store_true", help="channels_last memory format")
    g.add_argument("--seed", type=int, default=0, help="random seed (data order, synthesis, init)")
    g = p.add_argument_group("Output")
    g.add_argument("--checkpoint_path", default="./checkpoints/", help="folder for the checkpoint pairs")
    g.add_argument("--log_path", default="./logs/", help="folder for the run folders (config, CSV, plots)")
    g.add_argument("--val_every", type=int, default=0,
                   help="validate and checkpoint every N steps (0: at the end of each epoch)")
    g.add_argument("--resume", action="store_true", help="continue from the _resume.pt state of the same run")
    g.add_argument("--stop_after_epoch", type=positive_int, default=None,
                   help="end this run after N epochs, keeping the resumable state (split long runs)")
    g.add_argument("--gpu_id", type=int, default=0, help="CUDA device index (CPU when CUDA is absent; -1 forces CPU)")
    args = p.parse_args(argv)
    if args.val_every < 0:
        p.error(f"argument --val_every: must be >= 0, got {args.val_every}")
    if args.workers < 0:
        p.error(f"argument --workers: must be >= 0, got {args.workers}")
    return args


def apply_preset(args, device):
    """Fill flags left at None from the preset; returns the preset's name."""
    name = args.preset
    if args.data_path is None:
        name = "demo"
    elif name == "auto":
        name = "paper" if device.type == "cuda" else "cpu"
    for k, v in PRESETS[name].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    return name


def resolve_classes(data_path, obj_id):
    """[(class name, folder of good images)] from --data_path / --obj_id."""
    path = Path(data_path)
    if not path.is_dir():
        raise UsageError(f"--data_path {path} is not a folder")
    if path.name == "good" and path.parent.name == "train":
        return [(path.parent.parent.name or "custom", path)]
    if (path / "train" / "good").is_dir():
        return [(path.name, path / "train" / "good")]
    classes = sorted(p.name for p in path.iterdir() if (p / "train" / "good").is_dir())
    if classes:
        if obj_id == -1:
            return [(c, path / c / "train" / "good") for c in classes]
        if not 0 <= obj_id < len(classes):
            listing = ", ".join(f"{i}={c}" for i, c in enumerate(classes))
            raise UsageError(f"--obj_id {obj_id} is out of range for {path} (classes: {listing}; -1 = all)")
        return [(classes[obj_id], path / classes[obj_id] / "train" / "good")]
    if list_images(path):
        return [(path.name, path)]
    raise UsageError(f"--data_path {path} holds no images (expected a folder of images or MVTec layout)")


def split_files(files, val_fraction, seed):
    """Seeded shuffle, then hold out round(n * val_fraction) files (at least 4 when there are >= 20)."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(files), generator=g).tolist()
    n_val = round(len(files) * val_fraction) if val_fraction > 0 else 0
    if val_fraction > 0 and len(files) >= 20:
        n_val = max(n_val, 4)
    n_val = max(0, min(n_val, len(files) - 2))  # keep at least 2 images for training
    val = sorted(files[i] for i in order[:n_val])
    return sorted(files[i] for i in order[n_val:]), val


def _read_or_none(path, size):
    try:
        return (read_image(path, size) * 255).round().to(torch.uint8)
    except ValueError as e:
        log.warning("skipping %s", e)
        return None


class _Uint8Images(torch.utils.data.Dataset):
    def __init__(self, files, size):
        self.files, self.size = files, size

    def __len__(self):
        return len(self.files)

    def __getitem__(self, idx):
        return _read_or_none(self.files[idx], self.size)


def _keep_readable(batch):
    return [x for x in batch if x is not None]


def load_images(files, size, workers):
    """Decode every image once into a uint8 tensor (N, 3, size, size): epochs then cost no decoding.

    Unreadable files are skipped with one warning each.
    """
    loader = DataLoader(_Uint8Images(files, size), batch_size=32, num_workers=workers, worker_init_fn=seed_worker,
                        collate_fn=_keep_readable)
    images = [x for batch in loader for x in batch]
    return torch.stack(images) if images else torch.zeros(0, 3, size, size, dtype=torch.uint8)


def init_weights(model, recipe):
    """The authors' init; recipe "ours" also starts the segmentation head at p(anomaly) = 0.01.

    The focal-loss prior of RetinaNet (Lin et al. 2017): almost every pixel is normal, so starting at 0.5 spends
    the first hundreds of steps only pushing the background down; short CPU runs cannot afford that.
    """
    model.apply(weights_init)
    if recipe != "paper":
        with torch.no_grad():
            model.discriminative.decoder_segment.fin_out[0].bias.copy_(torch.tensor([0.0, -math.log(99.0)]))
    return model


def build_validation(images, synthesizer, device):
    """A fixed synthetic validation set: each held-out good image once clean, once with a simulated defect."""
    if len(images) == 0:
        return None
    g = torch.Generator(device=device).manual_seed(VAL_SEED)
    clean = images.to(device).float() / 255
    out = synthesizer(clean, g)
    x = torch.cat([clean, out["augmented_image"]])
    masks = torch.cat([torch.zeros_like(out["anomaly_mask"]), out["anomaly_mask"]])
    labels = torch.cat([torch.zeros(len(clean), device=device), out["has_anomaly"]])
    return {"images": x, "masks": masks, "labels": labels, "n_normal": len(clean)}


def calibrate_threshold(normal_scores):
    """Image-score threshold from held-out *normal* scores only: q99 + 0.5 * (q99 - median).

    A high quantile with a margin proportional to the spread of normal scores, so a clean part rarely reads NG;
    no defect images are needed (or used).
    """
    s = torch.as_tensor(normal_scores, dtype=torch.float64)
    q99, q50 = torch.quantile(s, 0.99).item(), s.median().item()
    return {"threshold": min(q99 + 0.5 * (q99 - q50), 1.0),
            "rule": "q99 + 0.5 * (q99 - median) of held-out normal scores",
            "normal_q50": q50, "normal_q99": q99, "normal_max": s.max().item(), "n_normal": len(s)}


def validate(model, val, amp_dtype, bs, kernel):
    """Image AUROC and pixel AP on the synthetic validation set, plus the calibration from its normal half."""
    model.eval()
    scores, maps = [], []
    for i in range(0, len(val["images"]), bs):
        out = predict(model, val["images"][i:i + bs], amp_dtype, kernel)
        scores.append(out["score"].cpu())
        maps.append(out["anomaly_map"].cpu())
    model.train()
    scores, maps = torch.cat(scores), torch.cat(maps)
    labels, masks = val["labels"].cpu().numpy(), val["masks"][:, 0].cpu().numpy()
    return ({"val_image_auroc": image_auroc(labels, scores.numpy()), "val_pixel_ap": pixel_ap(masks, maps.numpy())},
            calibrate_threshold(scores[:val["n_normal"]]))


class Diverged(RuntimeError):
    pass


def prepare_batch(batch, device, channels_last=False):
    """Cached uint8 images (B, 3, H, W) -> float in [0, 1] on the training device."""
    batch = batch.to(device, non_blocking=True).float() / 255
    return batch.contiguous(memory_format=torch.channels_last) if channels_last else batch


def train_step(model, batch, synthesizer, gen, criterion, optimizer, amp_dtype, scaler):
    """One optimisation step on a batch of good images (B, 3, H, W) in [0, 1]. Returns the loss terms."""
    s = synthesizer(batch, gen)
    with autocast(batch.device, amp_dtype):
        rec, logits = model(s["augmented_image"])
    losses = criterion(rec, s["image"], logits, s["anomaly_mask"])
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(losses["loss"]).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        losses["loss"].backward()
        optimizer.step()
    return losses


def make_optimizer(model, lr, total_steps):
    """Adam at lr; lr x0.2 at 80% and 90% of training (the paper's epochs, counted in steps so short runs decay)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    milestones = [int(total_steps * 0.8), int(total_steps * 0.9)]
    return optimizer, torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.2)


def stop_requested(stop, world, device):
    """A signal asked the run to stop; under DDP every rank agrees (else the others hang)."""
    requested = stop is not None and stop.requested
    if world > 1:
        flag = torch.tensor(float(requested), device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        requested = bool(flag.item())
    return requested


def train_class(args, obj_name, good_dir, device, preset, stop=None):
    rank, _, world = distributed_env()
    is_main = rank == 0
    amp_dtype = resolve_amp(args.amp, device)
    files = list_images(good_dir)
    if not files:
        raise UsageError(f"no images in {good_dir}")
    train_files, val_files = split_files(files, args.val_fraction, args.seed)
    train_images = load_images(train_files, args.size, args.workers)
    if len(train_images) == 0:
        raise UsageError(f"no readable images in {good_dir}")
    val_images = load_images(val_files, args.size, args.workers)
    grayscale = {"on": True, "off": False}.get(args.grayscale, is_grayscale(train_images[:64].float() / 255))
    bank = load_texture_bank(args.anomaly_source_path, args.size) if args.anomaly_source_path else None
    synthesizer = make_synthesizer(args.recipe, bank, grayscale, self_texture_prob=args.self_texture_prob).to(device)

    base = base_model_name(args.lr, args.epochs, args.bs, obj_name)
    config = {"size": args.size, "rec_base_width": args.rec_base_width, "seg_base_width": args.seg_base_width,
              "in_channels": 3, "grayscale": grayscale, "obj_name": obj_name, "lr": args.lr, "epochs": args.epochs,
              "bs": args.bs, "preset": preset, "recipe": args.recipe, "seed": args.seed,
              "amp": str(amp_dtype).replace("torch.", "") if amp_dtype else "fp32",
              "score_kernel": score_kernel(args.size, scaled=args.recipe != "paper")}
    log.info("class %s: %d training + %d validation images from %s, %s synthesis%s, %s", obj_name,
             len(train_images), len(val_images), good_dir, args.recipe, " (grayscale)" if grayscale else "",
             config["amp"])

    seed_everything(args.seed)
    model = init_weights(DRAEM(args.rec_base_width, args.seg_base_width), args.recipe).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    sampler = DistributedSampler(TensorDataset(train_images), num_replicas=world, rank=rank, shuffle=True,
                                 seed=args.seed, drop_last=True) if world > 1 else None
    loader_gen = torch.Generator().manual_seed(args.seed)
    loader = DataLoader(TensorDataset(train_images), batch_size=args.bs, shuffle=sampler is None,
                        sampler=sampler, generator=loader_gen, drop_last=len(train_images) // world > args.bs)
    steps_per_epoch = len(loader)
    optimizer, scheduler = make_optimizer(model, args.lr, args.epochs * steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    synth_gen = torch.Generator(device=device).manual_seed(args.seed + 7919 * rank)
    criterion = DraemLoss().to(device)
    # validation: every held-out image gets a defect, none is rotated
    val_synth = make_synthesizer(args.recipe, synthesizer.texture_bank, grayscale, rotate_prob=0.0, anomaly_prob=1.0)
    val = build_validation(val_images, val_synth, device)

    resume_path = Path(args.checkpoint_path) / f"{base}_resume.pt"
    start_epoch, step, best, run_dir = 0, 0, -1.0, None
    if args.resume:
        if not resume_path.is_file():
            raise UsageError(f"--resume: no resumable state {resume_path}")
        st = safe_load(resume_path)
        model.load_state_dict(st["model"])
        optimizer.load_state_dict(st["optimizer"])
        scheduler.load_state_dict(st["scheduler"])
        loader_gen.set_state(st["loader_gen"])
        synth_gen.set_state(st["synth_gen"].to(synth_gen.get_state().device))
        start_epoch, step, best, run_dir = st["epoch"], st["step"], st["best"], st["run_dir"]
        log.info("resumed %s at epoch %d, step %d", resume_path, start_epoch, step)
    train_model = DDP(model) if world > 1 else model
    logger = TrainingLogger(args.log_path, base, {**vars(args), **config}, argv=args.command, enabled=is_main,
                            run_dir=run_dir)

    def checkpoint(epoch, row):
        nonlocal best
        if world > 1:  # BN running stats are updated per rank; rank 0's are the ones DDP broadcasts
            for buf in model.buffers():
                dist.broadcast(buf, 0)
        calib = {"threshold": None, "rule": "no validation images"}
        if val is not None:
            metrics, calib = validate(model, val, amp_dtype, args.bs, config["score_kernel"])
            row.update(metrics)
        if not is_main:
            return
        pair_id = f"{logger.run_dir.name}-s{step}"
        save_pair(model, args.checkpoint_path, base + "last", config, calib, pair_id, logger.run_dir.name, step)
        # best by image AUROC + pixel AP on the synthetic validation set (nan counts as 0)
        score = sum(v for v in (row.get("val_image_auroc"), row.get("val_pixel_ap")) if v is not None and v == v)
        if val is None or score > best:
            best = score
            save_pair(model, args.checkpoint_path, base, config, calib, pair_id, logger.run_dir.name, step)
        save_resume(epoch)
        logger.log_epoch(row)

    def save_resume(epoch):
        atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "loader_gen": loader_gen.get_state(),
                     "synth_gen": synth_gen.get_state().cpu(), "epoch": epoch, "step": step, "best": best,
                     "run_dir": str(logger.run_dir)}, resume_path)

    t0 = time.time()
    end_epoch = min(args.epochs, args.stop_after_epoch or args.epochs)
    if stop is not None:
        stop.armed = True
    for epoch in range(start_epoch, end_epoch):
        if sampler is not None:
            sampler.set_epoch(epoch)
        sums, n, t_epoch = {}, 0, time.time()
        bar = tqdm(loader, desc=f"{obj_name} epoch {epoch + 1}/{args.epochs}", disable=not is_main, leave=False)
        out_of_time = False
        for (batch,) in bar:
            batch = prepare_batch(batch, device, args.channels_last)
            losses = train_step(train_model, batch, synthesizer, synth_gen, criterion, optimizer, amp_dtype, scaler)
            scheduler.step()
            step += 1
            vals = {k: v.item() for k, v in losses.items()}
            if not math.isfinite(vals["loss"]):
                raise Diverged(f"loss became {vals['loss']} at step {step}; the last good checkpoint is kept in "
                               f"{args.checkpoint_path} (try a lower --lr or --amp off)")
            for k, v in vals.items():
                sums[k] = sums.get(k, 0.0) + v
            n += 1
            bar.set_postfix(loss=f"{sums['loss'] / n:.4f}")
            out_of_time = bool(args.max_minutes) and time.time() - t0 > args.max_minutes * 60
            if world > 1 and args.max_minutes:  # every rank must stop at the same step, or DDP hangs
                flag = torch.tensor(float(out_of_time), device=device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                out_of_time = bool(flag.item())
            if stop_requested(stop, world, device):  # Ctrl-C / SIGTERM: the resumable state, then exit 130 / 143
                if is_main:
                    save_resume(epoch)
                raise stop.interrupted(f"resumable state {resume_path} (continue with --resume)")
            if (args.val_every and step % args.val_every == 0) or out_of_time:
                checkpoint(epoch, {"epoch": epoch + n / steps_per_epoch, "step": step,
                                   "lr": optimizer.param_groups[0]["lr"], **{k: v / n for k, v in sums.items()},
                                   "seconds": round(time.time() - t0, 1)})
            if out_of_time:
                log.info("--max_minutes %s reached after %d steps", args.max_minutes, step)
                break
        if out_of_time:
            break
        row = {"epoch": epoch + 1, "step": step, "lr": optimizer.param_groups[0]["lr"],
               **{k: v / max(n, 1) for k, v in sums.items()}, "seconds": round(time.time() - t0, 1)}
        if not args.val_every or (epoch + 1 == end_epoch and step % args.val_every):
            checkpoint(epoch + 1, row)
        elif epoch + 1 == end_epoch and is_main:  # this step was just validated: one CSV row, the epoch boundary
            save_resume(epoch + 1)
        if is_main:
            log.info("epoch %d/%d  loss %.4f  val AUROC %s  (%.1fs)", epoch + 1, args.epochs, row["loss"],
                     f"{row['val_image_auroc']:.3f}" if "val_image_auroc" in row else "-", time.time() - t_epoch)
    if stop is not None:
        stop.armed = False
    logger.close()
    if is_main:
        log.info("checkpoints: %s (+_seg.pt), logs: %s", Path(args.checkpoint_path) / f"{base}.pt", logger.run_dir)
    return base, model


def init_distributed(args):
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK: NCCL on GPUs, gloo on CPU."""
    rank, local_rank, world = distributed_env()
    if world == 1:
        return select_device(args.gpu_id)
    use_cuda = torch.cuda.is_available() and args.gpu_id >= 0
    dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        return torch.device(f"cuda:{local_rank}")
    return torch.device("cpu")


def run_demo_evaluation(args, base, class_dir):
    from evaluate import evaluate_class, print_results  # only the demo needs it
    from utils.inference import Detector
    detector = Detector.from_checkpoint(args.checkpoint_path, base, select_device(args.gpu_id),
                                        resolve_amp(args.amp, select_device(args.gpu_id)))
    results = evaluate_class(detector, class_dir, bs=args.bs)
    print_results(results, title=f"demo test split ({class_dir})")
    return results


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    args.command = ["train.py", *(sys.argv[1:] if argv is None else argv)]
    set_max_pixels(args.max_pixels)
    try:
        with StopOnSignal(armed=False) as stop:
            run(args, stop)
    except (UsageError, FileNotFoundError) as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2
    except (Diverged, OSError) as e:  # OSError: a write failed (disk full ...); earlier checkpoints are whole
        print(f"train.py: error: {e}", file=sys.stderr)
        return 1
    except Interrupted as e:
        print(f"train.py: {e}", file=sys.stderr)
        return e.exit_code
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


def run(args, stop):
    device = init_distributed(args)
    preset = apply_preset(args, device)
    rank = distributed_env()[0]
    check_output_dir(args.checkpoint_path, "--checkpoint_path")  # before any work: nothing made on failure
    check_output_dir(args.log_path, "--log_path")
    if rank == 0:
        log.info("device: %s, preset: %s (size %d, widths %d/%d, bs %d, epochs %d)", device, preset, args.size,
                 args.rec_base_width, args.seg_base_width, args.bs, args.epochs)
    demo_dir = None
    if args.data_path is None:
        from utils.demo_data import make_demo_dataset
        demo_dir = make_demo_dataset(DEMO_ROOT)
        args.data_path = str(demo_dir)
    if args.anomaly_source_path is not None and not Path(args.anomaly_source_path).is_dir():
        raise UsageError(f"--anomaly_source_path {args.anomaly_source_path} is not a folder")
    classes = resolve_classes(args.data_path, args.obj_id)
    names = [base_model_name(args.lr, args.epochs, args.bs, obj_name) for obj_name, _ in classes]
    with hold_checkpoint_names(args.checkpoint_path, names, args.log_path) if rank == 0 else contextlib.nullcontext():
        for obj_name, good_dir in classes:
            base, _ = train_class(args, obj_name, good_dir, device, preset, stop)
        if demo_dir is not None and rank == 0:
            run_demo_evaluation(args, base, demo_dir)


if __name__ == "__main__":
    sys.exit(main())
