"""The training engine: one class's run from its folder of good images to checkpoint pairs.

    run, state = setup_run(settings, "bottle", good_dir, device, ["train.py"])
    run_epochs(run, state)            # epochs of train_step, a checkpoint() after each (or every N steps)

`Run` is what a run builds once and never changes (data, synthesiser, loader, validation set, logger, prior);
`TrainState` is what changes and what `--resume` restores (model, optimizer, schedule, generators, step, best
score), saved by utils/training/resume.py; `run.budget` (utils/training/schedule.py) is the run's length and its
--max_minutes plan. `settings` is a utils.config.Config.
"""
import dataclasses
import logging
import math
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from model import DRAEM
from model.feature_prior import PriorFusion, TailEvidence, fit_prior
from model.model_unet import Scorer, autocast, score_kernel
from utils.config import Config
from utils.data_loader import (RandomCrops, is_grayscale, list_images, load_images, load_images_at_scale, split_files,
                               validation_crops)
from utils.evaluation.thresholds import calibrate_threshold
from utils.images.reading import AUTO, SQUARE, auto_zoom, describe_scale, image_file_size, scale_of
from utils.images.tiles import raw_maps
from utils.loss import DraemLoss
from utils.runtime import (FairThreads, UsageError, display_name, distributed_env, progress, resolve_amp,
                           seed_everything)
from utils.storage.atomic import atomic_write_bytes
from utils.storage.pairs import base_model_name, save_pair
from utils.synthesis.simulation import jitter_images, make_synthesizer, samples_picture
from utils.synthesis.textures import load_texture_bank
from utils.training.fine_choice import fit_fine
from utils.training.resume import load_resume_state, resume_path, save_resume_state
from utils.training.schedule import (PLAN_AFTER_STEPS, Budget, make_optimizer, planned_epochs, replan, should_stop,
                                     step_cap)
from utils.training.validation import build_validation, validate
from utils.training_logger import TrainingLogger

log = logging.getLogger(__name__)

VAL_SEED = 1234  # the synthetic validation set is the same in every run


class Diverged(RuntimeError):
    """The loss became nan or inf; the last good checkpoint is kept."""


# ------------------------------------------------------------------------------------------- the step
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


def loss_values(losses, step, checkpoint_path):
    """The loss terms as floats; raises Diverged when the total is not finite."""
    values = {k: v.item() for k, v in losses.items()}
    if not math.isfinite(values["loss"]):
        raise Diverged(f"loss became {values['loss']} at step {step}; the last good checkpoint is kept in "
                       f"{checkpoint_path} (try a lower --lr or --amp off)")
    return values


# ------------------------------------------------------------------------------------------- the run
@dataclass
class TrainState:
    """What changes during a run, and all that --resume restores."""
    model: torch.nn.Module  # unwrapped (not DDP): what the checkpoints hold
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loader_gen: torch.Generator  # data order
    synth_gen: torch.Generator  # anomaly simulation, on the training device
    epoch: int = 0  # the epoch a resumed run restarts at
    step: int = 0  # optimisation steps done
    best: float = -1.0  # best validation image AUROC + pixel AP so far
    run_dir: str | None = None  # the run folder of logs


@dataclass(frozen=True, kw_only=True)
class Run:
    """What a run builds once and never changes (frozen; built by keyword in setup_run): the settings, the data,
    the networks' training wrapper, the prior. What changes is the TrainState and the Budget's plan."""
    settings: Config
    obj_name: str
    base: str  # checkpoint pair name
    config: dict  # stored in every checkpoint
    device: torch.device
    amp_dtype: torch.dtype | None
    rank: int
    world: int
    loader: DataLoader
    sampler: DistributedSampler | None
    synthesizer: object
    criterion: torch.nn.Module
    scaler: torch.amp.GradScaler | None
    val: dict | None  # build_validation's set
    whole_val: list | None  # --scale native / N: held-out uint8 images (3, H, W), the threshold's calibration set
    train_model: torch.nn.Module  # the model, DDP-wrapped when distributed
    logger: TrainingLogger
    budget: Budget  # the run's length: its step cap and plan, and the clock of --max_minutes (changes as it runs)
    stop: object = None  # utils.runtime.StopOnSignal: Ctrl-C / SIGTERM end the run after a step
    run_id: str = field(default_factory=lambda: secrets.token_hex(8))  # in every pair_id this run writes
    prior: PriorFusion | None = None  # --prior features: bank and novelty tail fixed, DRAEM's tail refitted
    val_novelty: torch.Tensor | None = None  # the prior's novelty maps of val["images"] (N, S, S)
    held_novelty: list | None = None  # at a tiled scale: its novelty maps (H, W) of the whole held-out images
    threads: FairThreads | None = None  # on a CPU: the threads follow the cores other programs leave free

    @property
    def is_main(self):
        return self.rank == 0


def load_training_sets(settings, train_files, val_files, scale):
    """(training dataset of (uint8 (3, size, size),) items, held-out uint8 (N, 3, size, size) for the synthetic
    validation, held-out whole images for the threshold or None), at the working `scale` (`working_scale`).

    --scale square: whole images resized. auto / native / N: random --size crops of the images at the working scale
    (utils/data_loader.py RandomCrops); the synthetic validation uses fixed crops of the held-out images, and the threshold is
    calibrated on the held-out images scored whole, tiled and stitched exactly as detect.py does.
    """
    if scale == SQUARE:
        return (TensorDataset(load_images(train_files, settings.size, settings.workers, settings.max_pixels)),
                load_images(val_files, settings.size, settings.workers, settings.max_pixels), None)
    held_out = load_images_at_scale(val_files, settings.size, settings.workers, scale, settings.max_pixels)
    train_images = load_images_at_scale(train_files, settings.size, settings.workers, scale, settings.max_pixels)
    # "auto": an epoch is one random crop of each image, so that --epochs costs what it does at "square"; native /
    # N: one crop per --size^2 of each image's area
    per_image = 1 if settings.scale == AUTO else None
    return (RandomCrops(train_images, settings.size, settings.seed, per_image),
            validation_crops(held_out, settings.size, VAL_SEED), held_out or None)


def working_scale(settings, train_files):
    """The scale images are read at (utils/images/reading.py `scale_of`); "auto" is resolved here, from the
    training images' sizes (read from their headers), into settings.scale_factor."""
    if settings.scale == AUTO:
        sizes = []
        for f in train_files:
            try:
                sizes.append(image_file_size(f))
            except (OSError, ValueError):
                continue  # the reader names it when the training images are read
        settings.scale_factor = auto_zoom(sizes, settings.size, settings.auto_sides)
    return scale_of(dataclasses.asdict(settings))


def load_class_data(settings, good_dir, device):
    """(training dataset, validation images, held-out whole images or None) from load_training_sets, the grayscale
    flag, and the training synthesiser."""
    files = list_images(good_dir)
    if not files:
        raise UsageError(f"no images in {good_dir}")
    train_files, val_files = split_files(files, settings.val_fraction, settings.seed)
    train_set, val_images, whole_val = load_training_sets(settings, train_files, val_files,
                                                          working_scale(settings, train_files))
    if len(train_set) == 0:
        raise UsageError(f"no readable images in {good_dir}")
    sample = torch.stack([train_set[i][0] for i in range(min(64, len(train_set)))])  # (<=64, 3, S, S) uint8
    grayscale = {"on": True, "off": False}.get(settings.grayscale, is_grayscale(sample.float() / 255))
    bank = load_texture_bank(settings.anomaly_source_path, settings.size) if settings.anomaly_source_path else None
    synthesizer = make_synthesizer(settings.recipe, bank, grayscale)
    return (train_set, val_images, whole_val), grayscale, synthesizer.to(device)


def preview_synthesis(settings, good_dir, out, n=8, device="cpu"):
    """`train.py --preview FILE`: a picture of n training samples with simulated defects, as this run makes them
    (the working size and scale, grayscale detection, textures, recipe), then no training."""
    files = list_images(good_dir)
    if not files:
        raise UsageError(f"no images in {good_dir}")
    gen = torch.Generator().manual_seed(settings.seed)
    pick = torch.randperm(len(files), generator=gen)[:n].tolist()
    picked_files = [files[i] for i in pick]
    picked, _, _ = load_training_sets(settings, picked_files, [], working_scale(settings, picked_files))
    images = torch.stack([picked[i][0] for i in range(len(picked))]).float() / 255  # (n, 3, S, S)
    grayscale = {"on": True, "off": False}.get(settings.grayscale, is_grayscale(images))
    bank = load_texture_bank(settings.anomaly_source_path, settings.size) if settings.anomaly_source_path else None
    synthesizer = make_synthesizer(settings.recipe, bank, grayscale, anomaly_prob=1.0).to(device)
    atomic_write_bytes(out, samples_picture(synthesizer(images.to(device), gen)))
    log.info("wrote %s: %d samples of %s with simulated defects", display_name(out), len(images), good_dir)


def checkpoint_config(settings, obj_name, grayscale, amp_dtype):
    """What a checkpoint pair says about itself: the run's Config and what the run resolved (the networks and
    the score rule are rebuilt from it without flags)."""
    return {**settings.to_dict(), "in_channels": 3, "grayscale": grayscale, "obj_name": obj_name,
            "amp": str(amp_dtype).replace("torch.", "") if amp_dtype else "fp32",
            "score_kernel": score_kernel(settings.size, scaled=settings.scaled_kernel)}


def build_state(settings, data, device, rank, world):
    """Seeded model, data loader (and DDP sampler), optimizer and generators: (TrainState, loader, sampler)."""
    seed_everything(settings.seed)
    model = DRAEM(settings.rec_base_width, settings.seg_base_width, rec_residual=settings.rec_residual)
    model = model.init_weights(settings.anomaly_prior).to(device)
    if settings.channels_last:
        model = model.to(memory_format=torch.channels_last)
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=settings.seed,
                                 drop_last=True) if world > 1 else None
    loader_gen = torch.Generator().manual_seed(settings.seed)
    loader = DataLoader(data, batch_size=settings.bs, shuffle=sampler is None, sampler=sampler,
                        generator=loader_gen, drop_last=len(data) // world > settings.bs)
    optimizer, scheduler = make_optimizer(model, settings.lr, step_cap(settings, len(loader)))
    synth_gen = torch.Generator(device=device).manual_seed(settings.seed + 7919 * rank)
    return TrainState(model, optimizer, scheduler, loader_gen, synth_gen), loader, sampler


def setup_run(settings, obj_name, good_dir, device, command, stop=None, clock=time.monotonic, threads=None,
              started=None):
    """Everything one class's training needs: (Run, TrainState), the state resumed when --resume is set.
    clock: seconds for the --max_minutes budget (a fake one in tests); started: the clock when the budget began
    (default: now)."""
    start = clock() if started is None else started
    rank, _, world = distributed_env()
    amp_dtype = resolve_amp(settings.amp, device)
    (train_set, val_images, whole_val), grayscale, synthesizer = load_class_data(settings, good_dir, device)
    base = base_model_name(settings.lr, settings.epochs, settings.bs, obj_name)
    config = checkpoint_config(settings, obj_name, grayscale, amp_dtype)
    log.info("class %s: %d training + %d validation %s from %s, scale %s, %s synthesis%s, %s", obj_name,
             len(train_set), len(val_images), "crops" if whole_val else "images", good_dir, describe_scale(config),
             settings.recipe, " (grayscale)" if grayscale else "", config["amp"])
    state, loader, sampler = build_state(settings, train_set, device, rank, world)
    # validation: every held-out image gets a defect, none is rotated
    val_synth = make_synthesizer(settings.recipe, synthesizer.texture_bank, grayscale, rotate_prob=0.0,
                                 anomaly_prob=1.0)
    val = build_validation(val_images, val_synth, device, VAL_SEED)
    if settings.resume:
        load_resume_state(resume_path(settings.checkpoint_path, base), state)
        log.info("resumed %s at epoch %d, step %d", resume_path(settings.checkpoint_path, base), state.epoch,
                 state.step)
    logger = TrainingLogger(settings.log_path, base, config, argv=command, enabled=rank == 0,
                            run_dir=state.run_dir)
    state.run_dir = str(logger.run_dir)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    train_model = DDP(state.model) if world > 1 else state.model
    criterion = DraemLoss().to(device)
    prior, val_novelty, held_novelty = fit_run_prior(settings, train_set, val, whole_val, device) \
        if settings.prior == "features" else (None, None, None)
    cap = step_cap(settings, len(loader))
    budget = Budget(settings.max_minutes * 60 if settings.max_minutes else None, clock, start, max_steps=cap,
                    total_steps=cap)
    run = Run(settings=settings, obj_name=obj_name, base=base, config=config, device=device, amp_dtype=amp_dtype,
              rank=rank, world=world, loader=loader, sampler=sampler, synthesizer=synthesizer, criterion=criterion,
              scaler=scaler, val=val, whole_val=whole_val, train_model=train_model, logger=logger, budget=budget,
              stop=stop, prior=prior, val_novelty=val_novelty, held_novelty=held_novelty, threads=threads)
    return run, state


def bank_images(train_set, settings):
    """uint8 images the bank is fitted on: the training images (square: (N, 3, S, S)); else (a prior with a side)
    the whole training images at the working scale (a list of (3, H_i, W_i)), as detect.py shows them to it."""
    if isinstance(train_set, RandomCrops):
        return train_set.sources
    return train_set.tensors[0]


def prior_batches(images, bs):
    """Float batches in [0, 1] of uint8 images: a stack (N, 3, S, S) in batches of bs, a list of images of their
    own shapes one at a time."""
    if isinstance(images, list):
        return (im[None].float() / 255 for im in images)
    return (images[i:i + bs].float() / 255 for i in range(0, len(images), bs))


def fit_run_prior(settings, train_set, val, whole_val, device, bs=32):
    """--prior features: (PriorFusion with the bank of the training images and the novelty tail of the held-out
    good images, its novelty maps of the validation set, and at a tiled scale of the whole held-out images (else
    None)), or Nones without held-out images. Square pairs
    show the prior each image resized to its square side; the others each whole working image at its own aspect,
    resized to about settings.prior_area pixels, its shorter side at least settings.prior_side (model/
    feature_prior.py FeaturePrior)."""
    if val is None:
        log.warning("no held-out images: the feature prior needs them for its tail tables; DRAEM alone")
        return None, None, None
    t0, images = time.time(), bank_images(train_set, settings)
    side, area = (None, None) if whole_val is None else (settings.prior_side, settings.prior_area)
    features = fit_prior(prior_batches(images, bs), seed=settings.seed, device=device, side=side, area=area)
    with torch.inference_mode():
        novelty = torch.cat([features(val["images"][i:i + bs]) for i in range(0, len(val["images"]), bs)])
        held = novelty[:val["n_normal"]] if not whole_val else \
            [features(im[None].float().to(device) / 255)[0] for im in whole_val]  # as detect.py: whole images
    prior = PriorFusion(features, TailEvidence.fit(torch.cat([m.flatten() for m in held])))
    log.info("feature prior: bank %d x %d from %d images in %.1fs", *features.bank.shape, len(images),
             time.time() - t0)
    if whole_val:  # the output map's fine evidence, weighted on simulated defects (square pairs: as before)
        prior.fine = fit_fine(prior, images, whole_val, settings.map_guide, settings.seed)[0]
    return prior, novelty, held if whole_val else None


def held_out_maps(run, scorer):
    """DRAEM's maps (H, W) of the held-out good images now, tiled and stitched as detect.py scores them (whole
    images at a tiled scale, else the validation set's good images)."""
    goods = run.whole_val if run.whole_val else list(run.val["images"][:run.val["n_normal"]])
    scorer.eval()
    maps = raw_maps(lambda tiles: scorer.networks(tiles)[1], goods, run.settings.size, run.device)
    scorer.train()
    return maps


def validate_run(run, state):
    """(validation metrics, calibration) of the model now; under DDP every rank takes rank 0's BN statistics.
    With a prior, DRAEM's tail table is refitted on its maps of the held-out good images (it changes as DRAEM
    trains); at a tiled scale the same maps, fused with the prior's novelty of those images (fixed, computed once
    per run), give the threshold: the held-out images scored whole, as detect.py scores them, in one DRAEM pass."""
    if run.world > 1:  # BN running stats are updated per rank; rank 0's are the ones DDP broadcasts
        for buf in state.model.buffers():
            dist.broadcast(buf, 0)
    if run.val is None:
        return {}, {"threshold": None, "rule": "no validation images"}
    scorer = Scorer.from_config(state.model, run.config)  # fp32, as detect.py scores; DRAEM alone
    maps = held_out_maps(run, scorer) if run.prior is not None or run.whole_val else None
    if run.prior is not None:
        run.prior.draem_tail = TailEvidence.fit(torch.cat([m.flatten() for m in maps])).to(run.device)
    metrics, calib = validate(scorer, run.val, run.settings.bs, run.settings.target_false_reject, run.prior,
                              run.val_novelty)
    if run.whole_val:  # tiled: the threshold from whole held-out images, scored as detect.py scores them
        with torch.inference_mode():
            fused = maps if run.prior is None else \
                [run.prior.fuse(n[None], m[None])[0] for n, m in zip(run.held_novelty, maps)]
            scores = torch.stack([scorer.score(m[None])[0].cpu() for m in fused])
        calib = calibrate_threshold(scores, run.settings.target_false_reject)
    return metrics, calib


def save_checkpoints(run, state, calib, row):
    """Rank 0: the last pair, the best pair when validation improved, the resume state and the CSV row."""
    settings, run_id = run.settings, run.run_id
    pair_id = f"{run_id}-s{state.step}"  # unique per write: two runs of one command never share one
    prior = run.prior.state() if run.prior is not None else None
    save_pair(state.model, settings.checkpoint_path, run.base + "last", run.config, calib, pair_id, run_id,
              state.step, prior)
    # best by image AUROC + pixel AP on the synthetic validation set (nan counts as 0)
    score = sum(v for v in (row.get("val_image_auroc"), row.get("val_pixel_ap")) if v is not None and v == v)
    if run.val is None or score > state.best:
        state.best = score
        save_pair(state.model, settings.checkpoint_path, run.base, run.config, calib, pair_id, run_id, state.step,
                  prior)
    save_resume_state(resume_path(settings.checkpoint_path, run.base), state)
    run.logger.log_epoch(row)


def checkpoint(run, state, row):
    """Validate, then (rank 0) write; `row` gets the validation metrics. Timed for the budget, then replanned."""
    t0 = run.budget.clock()
    metrics, calib = validate_run(run, state)
    row.update(metrics)
    calib.update({k: v for k, v in metrics.items() if k.startswith("val_rec_")})  # the pair's metadata too
    if run.is_main:
        save_checkpoints(run, state, calib, row)
    run.budget.checkpoint_s = run.budget.clock() - t0
    run.budget.checkpoints_s += run.budget.checkpoint_s
    if state.step < run.budget.total_steps:
        replan(run, state)


def validation_text(row):
    """A metrics row's validation for the log: image AUROC, the reconstruction's R2 on the held-out good images."""
    text = f"val AUROC {row['val_image_auroc']:.3f}" if "val_image_auroc" in row else "val AUROC -"
    if "val_image_auroc_draem" in row:  # a prior: each half alone too
        text += f" (DRAEM {row['val_image_auroc_draem']:.3f}, novelty {row['val_image_auroc_novelty']:.3f})"
    if "val_rec_r2" in row:
        text += f"  reconstruction R2 {row['val_rec_r2']:.2f} (min {row['val_rec_r2_min']:.2f})"
    if "val_rec_removal" in row:
        text += f", removal contrast {row['val_rec_removal']:.2f}"
    return text


def progress_row(state, epoch, sums, n, t0):
    """A metrics.csv row: the epoch (fractional mid-epoch), step, lr, mean loss terms over n steps, seconds."""
    return {"epoch": epoch, "step": state.step, "lr": state.optimizer.param_groups[0]["lr"],
            **{k: v / n for k, v in sums.items()}, "seconds": round(time.time() - t0, 1)}


def stop_on_signal(run, state):
    """Ctrl-C / SIGTERM: write the resumable state (--resume restarts this epoch), then raise Interrupted."""
    path = resume_path(run.settings.checkpoint_path, run.base)
    if run.is_main:
        save_resume_state(path, state)
    raise run.stop.interrupted(f"resumable state {path} (continue with --resume)")


class OutOfTime(Exception):
    """--max_minutes reached; the state has just been checkpointed."""


def epoch_label(run, epoch):
    """'epoch 3/20': the 1-based epoch of the epochs the run's plan takes now ('epoch 3' before a budget-filling
    run's first plan)."""
    planned = planned_epochs(run.budget.total_steps, len(run.loader))
    return f"epoch {epoch}" if planned is None else f"epoch {epoch}/{max(planned, epoch)}"


def train_epoch(run, state, t0):
    """One pass over the training images from state.epoch: its metrics.csv row. Raises OutOfTime."""
    settings, sums, n = run.settings, {}, 0
    bar = progress(run.loader, desc=f"{display_name(run.obj_name)} {epoch_label(run, state.epoch + 1)}",
                   disable=not run.is_main, leave=False)
    for (batch,) in bar:
        if run.budget.train_start is None:
            run.budget.train_start, run.budget.first_step = run.budget.clock(), state.step
        if run.threads is not None:
            run.threads.adjust()
        batch = prepare_batch(batch, run.device, settings.channels_last)
        if settings.jitter:  # the jittered good image is the input and the reconstruction target alike
            batch = jitter_images(batch, state.synth_gen, settings.jitter)
        losses = train_step(run.train_model, batch, run.synthesizer, state.synth_gen, run.criterion,
                            state.optimizer, run.amp_dtype, run.scaler)
        state.scheduler.step()
        state.step += 1
        for k, v in loss_values(losses, state.step, settings.checkpoint_path).items():
            sums[k] = sums.get(k, 0.0) + v
        n += 1
        bar.set_postfix(loss=f"{sums['loss'] / n:.4f}", refresh=False)  # drawn at the bar's own pace
        if state.step == run.budget.first_step + PLAN_AFTER_STEPS:
            if run.budget.seconds and not run.budget.checkpoints_s:
                # the first plan must know what a checkpoint costs (tiled validation of large images: tens of
                # seconds), or its last one runs past --max_minutes: one now, timed, then the plan (`checkpoint`)
                row = progress_row(state, state.epoch + n / len(run.loader), sums, n, t0)
                checkpoint(run, state, row)
                if run.is_main:
                    log.info("step %d  %s", state.step, validation_text(row))
            else:
                replan(run, state)
        late, signalled = should_stop(run, state)
        if signalled:
            stop_on_signal(run, state)
        if (settings.val_every and state.step % settings.val_every == 0) or late:
            row = progress_row(state, state.epoch + n / len(run.loader), sums, n, t0)
            checkpoint(run, state, row)
            if run.is_main:
                log.info("step %d  %s", state.step, validation_text(row))
        if late:
            log.info("the run ends after %d steps, %.0fs of its %.0fs (--max_minutes %s)", state.step,
                     run.budget.clock() - run.budget.start, run.budget.seconds, settings.max_minutes)
            raise OutOfTime
    return progress_row(state, state.epoch + 1, sums, max(n, 1), t0)


def run_epochs(run, state):
    """Train from state.epoch to --epochs (or --stop_after_epoch, or --max_minutes), checkpointing as set."""
    settings, t0 = run.settings, time.time()
    end_epoch = math.ceil(run.budget.max_steps / len(run.loader))  # --epochs, or a budget-filling run's UNBOUNDED
    end_epoch = min(end_epoch, settings.stop_after_epoch or end_epoch)
    if run.stop is not None:
        run.stop.armed = True  # from now on a signal ends the run after the current step, resumable
    try:
        for epoch in range(state.epoch, end_epoch):
            if run.sampler is not None:
                run.sampler.set_epoch(epoch)
            if isinstance(run.loader.dataset, RandomCrops):
                run.loader.dataset.set_epoch(epoch)  # this epoch's crop offsets, seeded by (seed, epoch)
            t_epoch = time.time()
            row = train_epoch(run, state, t0)
            state.epoch = epoch + 1
            last = epoch + 1 == end_epoch
            if settings.val_every:  # validated every N steps: once more at the end, unless the last step just was
                if last and state.step % settings.val_every:
                    checkpoint(run, state, row)
                elif last and run.is_main:
                    save_resume_state(resume_path(settings.checkpoint_path, run.base), state)
            elif (epoch + 1) % run.budget.every_epochs == 0 or last:
                checkpoint(run, state, row)
            elif run.is_main:  # not due (schedule.checkpoint_epochs): the resumable state and the CSV row only
                save_resume_state(resume_path(settings.checkpoint_path, run.base), state)
                run.logger.log_epoch(row)
            if run.is_main:
                log.info("%s  loss %.4f  %s  (%.1fs)", epoch_label(run, epoch + 1), row["loss"],
                         validation_text(row), time.time() - t_epoch)
    except OutOfTime:
        return
    finally:
        if run.stop is not None:
            run.stop.armed = False


def train_class(settings, obj_name, good_dir, device, command, stop=None, threads=None, started=None):
    """Train one class; returns (checkpoint pair name, the trained model). stop: see Run.stop; started: when the
    run's minutes began (time.monotonic; default now)."""
    run, state = setup_run(settings, obj_name, good_dir, device, command, stop, threads=threads, started=started)
    run_epochs(run, state)
    if run.is_main:
        log.info("checkpoints: %s (+_seg.pt), logs: %s", Path(settings.checkpoint_path) / f"{run.base}.pt",
                 run.logger.run_dir)
    return run.base, state.model
