"""Teaching a trained pair confirmed-good images, in seconds and without training (train.py --add_good).

    name = teach(Lesson(checkpoint_path="checkpoints/", base="DRAEM_test_0.0001_20_bs8_part_", folder="line3/ok"))

The images are read as detection reads them (utils/images/reading.py `read_image`, the pair's working shape);
their patch features join the feature prior's memory bank, which the coreset's greedy re-thins to its capacity
(model/feature_prior.py `grow_bank`); the two tail tables are refitted and the OK/NG threshold recalibrated
(utils/evaluation/thresholds.py `calibrate_threshold`) on held-out good images: the training run's held-out images
(when its folder is still there) and every new image, its novelty leave-self-out, against the bank without its own
entries. DRAEM's networks are unchanged.

The result is a new pair `<root>taught<k>_` (`<root>`: the trained pair's name; k counts the teachings), written
atomically by one writer; the taught pair is never touched. The bank's state in `_seg.pt` gets "teachings", one
record a teaching (time, folder, count, sha256 digests, bank sizes, thresholds), and the run folder
`<log_path>/<name>/` gets teaching.json with the files as well. The record is written first and the pair last
(`commit`): a taught pair never exists without its teaching.json.

Every file is read through utils/images/reading.py `read_file_bytes` (a FIFO or a device is never opened). A signal
(`Lesson.stop`, armed by train.py) ends teaching between two steps, never inside one.
"""
import hashlib
import json
import logging
import re
import secrets
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from model.feature_prior import CORESET_SIZE, FeaturePrior, PriorFusion, TailEvidence, grow_bank
from model.model_unet import Scorer, with_prior
from utils.config import Config
from utils.data_loader import list_images, resolve_classes, split_files, validation_crops
from utils.evaluation.thresholds import calibrate_threshold, describe
from utils.images.reading import (DEFAULT_MAX_PIXELS, SQUARE, check_pixels, image_file_size, read_file_bytes,
                                  read_image, scale_of)
from utils.images.tiles import raw_maps
from utils.runtime import UsageError, display_name
from utils.storage.atomic import atomic_write_bytes
from utils.storage.locks import hold_checkpoint_names
from utils.storage.pairs import load_pair, pair_is_complete, pair_paths, save_pair
from utils.training_logger import TrainingLogger

log = logging.getLogger(__name__)

TAUGHT_RE = re.compile(r"^(?P<root>.*)taught(?P<k>\d+)_$")
SIZE_FACTOR = 2.0  # an image whose longer side is more than this far outside the pair's range: another size class


@dataclass
class Lesson:
    """What one teaching is given (train.py --add_good's flags)."""
    checkpoint_path: str
    base: str  # the pair taught
    folder: str  # confirmed-good images, any depth
    log_path: str = Config.log_path
    target_false_reject: float = Config.target_false_reject
    device: str = "cpu"
    max_pixels: int = DEFAULT_MAX_PIXELS
    capacity: int = CORESET_SIZE  # bank rows at most
    argv: tuple = ()  # the command, for the run folder
    stop: object = None  # utils.runtime.StopOnSignal, armed: a signal ends teaching at its next step


@dataclass
class NewImage:
    path: Path
    digest: str  # sha256 of the file's bytes
    side: int  # longer side in pixels, from the header
    image: torch.Tensor = None  # (3, H, W) in [0, 1] at the pair's working shape


@dataclass
class Taught:
    """What a teaching learned, before anything is written: the new pair's parts and its record."""
    model: torch.nn.Module  # DRAEM, unchanged, on the CPU
    config: dict
    calibration: dict
    prior: dict  # the feature prior's state, "teachings" included
    record: dict  # teaching_record
    images: list  # NewImage
    pair_id: str
    seconds: float  # from the loaded backbone to the end of the refit

    def run_record(self, name):
        """teaching.json's record: the teaching's, with the pair it belongs to."""
        return {**self.record, "pair": name, "pair_id": self.pair_id, "seconds": round(self.seconds, 2)}

    def save(self, checkpoint_path, name):
        save_pair(self.model, checkpoint_path, name, self.config, self.calibration, self.pair_id, prior=self.prior)


# ------------------------------------------------------------------------------------------- stopping
def stop_here(stop, saved="nothing taught"):
    """Interrupted when a signal asked teaching to stop (`Lesson.stop`): raised between two steps, so a signal never
    cuts a write, a lock or a log line in half."""
    if stop is not None and stop.requested:
        raise stop.interrupted(saved)


# ------------------------------------------------------------------------------------------- refusals
def check_teachable(meta, base):
    """UsageError unless the pair has a feature prior, the bank teaching adds to."""
    if meta.get("original"):
        raise UsageError(f"{base} is one of the authors' released pairs: they carry no feature prior (no memory "
                         f"bank of good patches to add to); train a pair with train.py and teach that")
    if not meta.get("prior"):
        raise UsageError(f"{base} was trained with --prior none: DRAEM alone has no memory bank to add good images "
                         f"to; retrain with --prior features, or move only the threshold (evaluate.py --recalibrate)")


def new_images(folder, teachings, stop=None):
    """NewImage per file below `folder` (digest and header size, not decoded yet). UsageError, naming the files:
    no images, a special file (never opened), an unreadable header, the same image twice, an image an earlier
    teaching gave already."""
    folder = Path(folder)
    files = list_images(folder) if folder.is_dir() else []
    if not files:
        raise UsageError(f"--add_good {display_name(folder)}: " +
                         ("no readable images in this folder" if folder.is_dir() else "not a folder"))
    taught = {d: t["teaching"] for t in teachings for d in t["digests"]}
    seen, out = {}, []
    for f in files:
        stop_here(stop)
        try:
            data = read_file_bytes(f)
            w, h = check_pixels(f, data, float("inf"))
        except OSError as e:
            raise UsageError(f"--add_good: cannot read {display_name(f)} ({e.strerror or e}); nothing taught") \
                from None
        except ValueError as e:  # a special file, no image header
            raise UsageError(f"--add_good: {e}; nothing taught") from None
        digest = hashlib.sha256(data).hexdigest()
        if digest in seen:
            raise UsageError(f"--add_good: {display_name(seen[digest])} and {display_name(f)} are the same image "
                             f"(sha256 {digest[:12]}); give each image once")
        if digest in taught:
            raise UsageError(f"--add_good: {display_name(f)} was taught already (teaching {taught[digest]}); give "
                             f"each image once")
        seen[digest] = f
        out.append(NewImage(f, digest, max(w, h)))
    return out


def check_size_class(images, reference):
    """UsageError when an image's longer side is more than SIZE_FACTOR outside the range `reference` (lo, hi) px
    of the images the pair was trained (and taught) on; None: no reference, nothing checked."""
    if reference is None:
        log.warning("the training images are not where the pair says (config data_path): the size class of the "
                    "new images is not checked")
        return
    lo, hi = reference
    for im in images:
        if not lo / SIZE_FACTOR <= im.side <= hi * SIZE_FACTOR:
            raise UsageError(f"--add_good: {display_name(im.path)} has a longer side of {im.side} px, another size "
                             f"class than this pair's images ({lo}-{hi} px, taught within x{SIZE_FACTOR:g}); "
                             f"train a pair on images of that size")


def read_all(images, config, max_pixels, stop=None):
    """Decode every NewImage at the pair's working shape (the detection reader); UsageError naming a bad file."""
    for im in images:
        stop_here(stop)
        try:
            im.image = read_image(im.path, int(config["size"]), scale_of(config), max_pixels)
        except ValueError as e:
            raise UsageError(f"--add_good: {e}; nothing taught") from None


# ------------------------------------------------------------------------------------------- the held-out images
def training_held_out(config):
    """The files training held out for its threshold (its folder and split, re-derived from the config), or []
    when that folder is gone."""
    data_path = config.get("data_path")
    if not data_path or not Path(data_path).is_dir():
        return []
    try:
        folders = dict(resolve_classes(data_path, -1))
    except UsageError:
        return []
    good_dir = folders.get(config.get("obj_name"))
    files = list_images(good_dir) if good_dir is not None else []
    return split_files(files, config["val_fraction"], config["seed"])[1] if files else []


def size_reference(held_files, teachings):
    """(lo, hi) longer sides in px of the training's held-out images and of earlier teachings, or None."""
    sides = [s for t in teachings for s in t["sides"]]
    for f in held_files:
        try:
            sides.append(max(image_file_size(f)))
        except (OSError, ValueError):
            continue
    return (min(sides), max(sides)) if sides else None


def read_held_out(files, config, max_pixels, stop=None):
    """The training's held-out images (3, H, W) at the pair's working shape. One that cannot be read (a FIFO, a
    file removed since) is skipped with a warning, as training skipped it when it held them out."""
    held = []
    for f in files:
        stop_here(stop)
        try:
            held.append(read_image(f, int(config["size"]), scale_of(config), max_pixels))
        except ValueError as e:
            log.warning("skipping the held-out image %s", e)
    return held


# ------------------------------------------------------------------------------------------- the bank
def bank_units(image, config, size, whole):
    """What the bank holds of one image, as training fits its bank (utils/training/engine.py `bank_images`): the
    image itself ("square", or a prior with a side, which sees whole working images), else (pairs from before
    the aspect-kept prior) fixed tile-sized crops of it: (U, 3, H, W) in [0, 1]."""
    if scale_of(config) == SQUARE or whole:
        return image[None]
    return validation_crops([image], size, int(config["seed"]))


def same_prior(features, bank):
    """A FeaturePrior like `features` (its size, side, area and backbone) with another bank."""
    return FeaturePrior(bank, features.size, features.backbone, features.side, features.area)


@torch.no_grad()
def taught_bank(fusion, images, config, capacity, device, stop=None):
    """(bank (N, C) fp16, source (N,) int: the new image each row came from, -1 for the rows kept of the old bank;
    each new image's features (U, C, h, w) fp16, U its bank units)."""
    whole, feats = fusion.features.side is not None, []
    for im in images:
        stop_here(stop)
        units = bank_units(im.image, config, int(config["size"]), whole)
        feats.append(fusion.features.features(units.to(device)).half().cpu())
    rows = [f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]) for f in feats]  # (U * h * w, C) each
    old = fusion.features.bank.cpu()
    cells = [f.shape[-2] * f.shape[-1] for f in feats for _ in range(f.shape[0])]  # rows of each unit
    keep = grow_bank(old, torch.cat(rows), cells, capacity, int(config["seed"]))
    bank = torch.cat([old, *rows])[keep]
    source = torch.cat([torch.full((old.shape[0],), -1), *(torch.full((len(r),), j) for j, r in enumerate(rows))])
    return bank, source[keep], feats


def leave_self_out_novelty(fusion, bank, source, goods, config, device, stop=None):
    """Novelty maps (H, W) of the good images (image, j, features), the training's held-out images first (j None):
    those against the whole bank, each new image j against the bank without its own rows, never against
    itself. A "square" image, or a whole image for a prior with a side, is one bank unit, so its features are not
    computed again; crops of pairs from before the aspect-kept prior are scored tiled, as those pairs detect."""
    size, whole = int(config["size"]), fusion.features.side is not None
    one_unit = whole or scale_of(config) == SQUARE

    def prior(keep):
        return same_prior(fusion.features, bank[keep]).to(device)
    maps = []
    held = [im for im, j, _ in goods if j is None]
    if held:
        everything = prior(torch.ones_like(source, dtype=torch.bool))
        maps += [everything(im[None].to(device))[0] for im in held] if whole else \
            raw_maps(everything, held, size, device)  # square: one tile each
    for im, j, f in goods:
        if j is None:
            continue
        stop_here(stop)
        own = prior(source != j)
        maps += list(own.novelty(f.float().to(device), im.shape[-2:])) if one_unit else \
            raw_maps(own, [im], size, device)
    return maps


def calibrate(model, config, fusion, novelty, goods, target, device):
    """(tail tables refitted on the good images, calibration dict from their image scores).

    Both tables, as training fits them on its held-out images (utils/training/engine.py `fit_run_prior`,
    `refit_draem_tail`): the novelty's on the leave-self-out novelty maps, DRAEM's on its maps of the same images
    (DRAEM never saw the new images). Refitting DRAEM's too kept recall on MTD's shifted-good experiment (38.0% ->
    37.0%, against 24.0% with the novelty's alone: docs/thresholds.md). The maps are fused after stitching: for
    "square" pairs (one tile) exactly as detect.py scores."""
    size = int(config["size"])
    draem = Scorer.from_config(model, config).eval()  # DRAEM alone: its map, and the pair's score rule
    draem_maps = raw_maps(lambda tiles: draem(tiles)[1], [g[0] for g in goods], size, device)
    tails = [TailEvidence.fit(torch.cat([m.flatten() for m in maps])).to(device) for maps in (novelty, draem_maps)]
    taught = PriorFusion(fusion.features, *tails, fusion.gate, fusion.fine)
    with torch.inference_mode():
        scores = torch.stack([draem.score(with_prior(taught, d[None], novelty=n[None]))[0].cpu()
                              for n, d in zip(novelty, draem_maps)])
    return tails, calibrate_threshold(scores, target)


# ------------------------------------------------------------------------------------------- the new pair
def taught_name(checkpoint_path, base, log_path=None):
    """`<root>taught<k>_` with k one more than any teaching of the same root: its pairs in the folder, and its
    records in `log_path` (a record whose pair a kill -9 stopped keeps its name: no other teaching gets it)."""
    match = TAUGHT_RE.match(base)
    root = match["root"] if match else base
    names = [p.stem.removesuffix("_seg") for p in Path(checkpoint_path).glob("*.pt")]
    if log_path is not None:
        names += [p.parent.name for p in Path(log_path).glob("*/teaching.json")]
    taken = [int(m["k"]) for n in names if (m := TAUGHT_RE.match(n)) and m["root"] == root]
    return f"{root}taught{max(taken, default=0) + 1}_"


def hold_new_name(checkpoint_path, base, log_path):
    """(name, the ExitStack holding it): a taught name no pair has yet, held against other writers."""
    while True:
        name = taught_name(checkpoint_path, base, log_path)
        held = hold_checkpoint_names(checkpoint_path, [name], log_path)
        if not any(p.exists() for p in pair_paths(checkpoint_path, name)):
            return name, held
        held.close()  # another teacher wrote it meanwhile


def teaching_record(lesson, meta, k, images, counts, calibs):
    """The teaching as plain types (stored in the pair's prior, so it loads with weights_only=True)."""
    bank_before, bank_after, from_new, n_held = counts
    return {"teaching": k, "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "from": lesson.base, "from_pair_id": meta.get("pair_id"), "folder": display_name(lesson.folder),
            "n_images": len(images), "digests": [im.digest for im in images],
            "sides": [min(im.side for im in images), max(im.side for im in images)],
            "bank_before": bank_before, "bank_after": bank_after, "bank_rows_from_new": from_new,
            "n_held_out": n_held, "threshold_before": calibs[0].get("threshold"),
            "threshold_after": calibs[1].get("threshold")}


def write_run_folder(lesson, name, config, record, images):
    """<log_path>/<name>/: config.json and command.txt (utils/training_logger.py), and teaching.json (the record,
    the pair it belongs to and each file with its digest). A file that cannot be written removes the folder."""
    logger = TrainingLogger(lesson.log_path, name, config, argv=list(lesson.argv) or None)  # removes it itself
    files = [{"file": display_name(im.path), "sha256": im.digest} for im in images]
    text = json.dumps({**record, "files": files}, indent=2) + "\n"
    try:
        atomic_write_bytes(logger.run_dir / "teaching.json", text.encode("utf-8"))
    except BaseException:
        shutil.rmtree(logger.run_dir, ignore_errors=True)
        raise
    return logger.run_dir


def commit(lesson, name, taught):
    """The record first, then the pair (one atomic group: utils/storage/pairs.py `save_pair`), so that a pair
    never exists without its teaching.json. A failed write (a full disk) or a second signal before the pair is
    committed removes the record again: the pair with its record, or neither. Returns the run folder."""
    run_dir = write_run_folder(lesson, name, taught.config, taught.run_record(name), taught.images)
    try:
        taught.save(lesson.checkpoint_path, name)
    except BaseException:
        if not pair_is_complete(lesson.checkpoint_path, name):  # else it failed past the commit: the pair stands
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    return run_dir


def refit(lesson, model, config, fusion, images, held):
    """Teach `fusion` in place: the grown bank, both tail tables; returns (calibration, bank rows from the new
    images). held: the training's held-out images (3, H, W)."""
    bank, source, feats = taught_bank(fusion, images, config, lesson.capacity, lesson.device, lesson.stop)
    goods = [(im, None, None) for im in held] + [(im.image, j, feats[j]) for j, im in enumerate(images)]
    novelty = leave_self_out_novelty(fusion, bank, source, goods, config, lesson.device, lesson.stop)
    stop_here(lesson.stop)
    fusion.features = same_prior(fusion.features, bank).to(lesson.device)
    (fusion.novelty_tail, fusion.draem_tail), calib = calibrate(model, config, fusion, novelty, goods,
                                                                lesson.target_false_reject, lesson.device)
    return calib, int((source >= 0).sum())


def learn(lesson):
    """Everything before the first write (a Taught); refusals (UsageError) and signals here leave nothing
    written."""
    model, meta = load_pair(lesson.checkpoint_path, lesson.base)
    check_teachable(meta, lesson.base)
    config, teachings = meta["config"], list(meta["prior"].get("teachings", []))
    images = new_images(lesson.folder, teachings, lesson.stop)
    held_files = training_held_out(config)
    check_size_class(images, size_reference(held_files, teachings))
    stop_here(lesson.stop)
    fusion = PriorFusion.from_state(meta["prior"]).to(lesson.device)  # loads the backbone
    t0 = time.monotonic()
    read_all(images, config, lesson.max_pixels, lesson.stop)
    held = read_held_out(held_files, config, lesson.max_pixels, lesson.stop)
    model = model.to(lesson.device)
    calib, from_new = refit(lesson, model, config, fusion, images, held)
    k = len(teachings) + 1
    calib["source"] = f"teaching {k}: {len(held)} held-out training images + {len(images)} taught (leave-self-out)"
    counts = (meta["prior"]["bank"].shape[0], fusion.features.bank.shape[0], from_new, len(held))
    record = teaching_record(lesson, meta, k, images, counts, (meta["calibration"], calib))
    prior = {**fusion.state(), "teachings": [*teachings, record]}
    pair_id = f"{(meta.get('pair_id') or 'original').split('+')[0]}+taught{k}-{secrets.token_hex(4)}"
    stop_here(lesson.stop)
    return Taught(model.cpu(), config, calib, prior, record, images, pair_id, time.monotonic() - t0)


def teach(lesson):
    """Teach `lesson.base` the images of `lesson.folder`; returns the new pair's name. Refusals (UsageError) come
    before anything is written; a signal or a crash leaves the old pair as it was, and the new pair with its record
    or neither (kill -9 between the two: the record alone, whose name no later teaching takes)."""
    taught = learn(lesson)
    name, holding = hold_new_name(lesson.checkpoint_path, lesson.base, lesson.log_path)
    with holding:
        stop_here(lesson.stop)  # the last moment a signal leaves nothing taught
        run_dir = commit(lesson, name, taught)
    record = taught.record
    log.info("taught %s %d images in %.1fs (after loading): bank %d -> %d rows (%d from the new images); %s",
             lesson.base, record["n_images"], taught.seconds, record["bank_before"], record["bank_after"],
             record["bank_rows_from_new"], describe(taught.calibration))
    log.info("wrote the pair %s (+_seg.pt) in %s; record %s", name, lesson.checkpoint_path, run_dir / "teaching.json")
    stop_here(lesson.stop, f"the taught pair {name} was written, with its record {run_dir / 'teaching.json'}")
    return name
