"""Checkpoint pairs: names, the format, saving and loading (ours, or the authors' raw state dicts).

A pair is `{base}.pt` (reconstructive) and `{base}_seg.pt` (discriminative). Each of ours is a plain dict of
tensors and plain types, read with `torch.load(..., weights_only=True)`: format_version, kind, pair_id, run_id,
step, state_dict, config (widths, size, scale, grayscale, score rule, ...), calibration (threshold, rule, ...);
a `_seg.pt` trained with the feature prior also holds "prior" (model/feature_prior.py PriorFusion.state()).
A pair is written as one atomic group (utils/storage/atomic.py); readers see a committed group, never half of one.
"""
import logging
import pickle
import re
from pathlib import Path

import torch

from model.model_unet import DRAEM
from utils.runtime import UsageError
from utils.storage.atomic import atomic_group, pending_moves

log = logging.getLogger(__name__)


FORMAT_VERSION = 1


EXTENSIONS = (".pt", ".pckl", ".pth")


def base_model_name(lr, epochs, bs, obj_name, suffix=""):
    """The seed's name, e.g. DRAEM_test_0.0001_700_bs8_bottle_ (files: <name>.pt and <name>_seg.pt)."""
    return f"DRAEM_test_{lr}_{epochs}_bs{bs}_{obj_name}_{suffix}"


def is_pair_of(base, obj_name):
    """True when `base` is a pair train.py writes for the class `obj_name`: its best or last pair, or a teaching of
    either (utils/training/teach.py `<name>taught<k>_`)."""
    return re.fullmatch(rf"DRAEM_test_.+_bs\d+_{re.escape(obj_name)}_(last)?(taught\d+_)?", base) is not None


def pair_paths(checkpoint_path, base, ext=".pt"):
    d = Path(checkpoint_path)
    return d / f"{base}{ext}", d / f"{base}_seg{ext}"


def save_pair(model, checkpoint_path, base, config, calibration, pair_id, run_id=None, step=None, prior=None):
    """Write `{base}.pt` and `{base}_seg.pt` of a DRAEM module (unwrapped from DDP by the caller) as one unit.
    prior: the feature prior's state (model/feature_prior.py PriorFusion.state()), kept in `_seg.pt`."""
    paths = pair_paths(checkpoint_path, base)
    objs = []
    for kind, net in (("reconstructive", model.reconstructive), ("discriminative", model.discriminative)):
        state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        objs.append({"format_version": FORMAT_VERSION, "kind": kind, "pair_id": pair_id,
                     "run_id": run_id if run_id is not None else pair_id, "step": step, "state_dict": state,
                     "config": dict(config), "calibration": dict(calibration)})
    if prior is not None:
        objs[1]["prior"] = prior
    atomic_group(paths, lambda f, i: torch.save(objs[i], f))
    return paths


def newest_complete_pair(checkpoint_path, contains="", obj_name=None):
    """Name of the most recently written complete pair in the folder (best-by-validation pairs first); a half
    pair (one file missing, or two files not written together) is skipped with a warning. obj_name: only the
    pairs of that class (`is_pair_of`)."""
    d = Path(checkpoint_path)
    if not d.is_dir():
        raise UsageError(f"--checkpoint_path {d} is not a folder")
    segs = [p for p in d.iterdir() if p.suffix in EXTENSIONS and p.stem.endswith("_seg") and contains in p.stem
            and (obj_name is None or is_pair_of(p.stem[: -len("_seg")], obj_name))]
    best = [p for p in segs if not p.stem.endswith("last_seg")]
    for group in (best, [p for p in segs if p not in best]):
        for seg in sorted(group, key=lambda p: p.stat().st_mtime, reverse=True):
            base = seg.stem[: -len("_seg")]
            rec = seg.with_name(base + seg.suffix)
            if (rec.is_file() if seg.suffix != ".pt" else pair_is_complete(d, base)):
                return base
            log.warning("skipping the incomplete checkpoint pair %s in %s", base, d)
    what = " for the demo" if contains else f" for the class {obj_name}" if obj_name else ""
    raise UsageError(f"no complete checkpoint pair in {d}{what}; train one first (python train.py)")


def safe_load(path):
    """torch.load with weights_only=True; anything else (not a file, arbitrary pickles) is a UsageError."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UsageError(f"{path} holds objects other than tensors and plain data; refusing to load it "
                         f"({str(e).splitlines()[0][:120]})") from None
    except Exception as e:  # zip/format errors: not a checkpoint at all
        raise UsageError(f"{path} is not a PyTorch checkpoint ({type(e).__name__})") from None


def current_paths(checkpoint_path, base, ext=".pt"):
    """pair_paths, each replaced by the temp file of a committed but unfinished write when there is one."""
    moves = pending_moves(checkpoint_path)
    return tuple(moves.get(p, p) for p in pair_paths(checkpoint_path, base, ext))


def find_pair(checkpoint_path, base):
    """(rec, seg) paths of the pair `base`; UsageError naming what is missing (nothing is loaded)."""
    d = Path(checkpoint_path)
    if not d.is_dir():
        raise UsageError(f"--checkpoint_path {d} is not a folder")
    for ext in EXTENSIONS:
        rec, seg = current_paths(d, base, ext)
        if rec.is_file() or seg.is_file():
            if not (rec.is_file() and seg.is_file()):
                present, missing = (rec, seg) if rec.is_file() else (seg, rec)
                raise UsageError(f"half a checkpoint pair: {present} exists but {missing} is missing")
            return rec, seg
    found = sorted(p.name for p in d.iterdir() if p.suffix in EXTENSIONS)
    listing = ", ".join(found) if found else "none"
    raise UsageError(f"no checkpoint {base}.pt (+ {base}_seg.pt) in {d}; checkpoints there: {listing}")


def check_same_pair(rec_path, seg_path, rec_meta, seg_meta):
    """UsageError unless both halves were written together (same pair_id); says which case it is."""
    if (rec_meta is None) != (seg_meta is None):
        raise UsageError(f"mismatched checkpoint pair: one of {rec_path.name} / {seg_path.name} is the authors' "
                         f"raw state dict and the other one of ours")
    if rec_meta is None or rec_meta["pair_id"] == seg_meta["pair_id"]:
        return
    raise UsageError(f"mismatched checkpoint pair: {rec_path.name} and {seg_path.name} were not written together "
                     f"(pair ids {rec_meta['pair_id']} and {seg_meta['pair_id']}); use another pair or retrain")


def pair_is_complete(checkpoint_path, base):
    """True when both files of our pair exist and hold the same pair_id (read lazily, without the weights)."""
    ids = []
    for path in current_paths(checkpoint_path, base):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # missing, not a zip checkpoint (the authors' .pckl are never ours), unreadable
            return False
        ids.append(obj.get("pair_id") if isinstance(obj, dict) else None)
    return ids[0] is not None and ids[0] == ids[1]


OUR_FIELDS = {"pair_id": str, "state_dict": dict, "config": dict, "calibration": dict}


def check_ours(obj, path):
    """UsageError naming the file and the field unless `obj` has what the loader and the Detector read."""
    for key, kind in OUR_FIELDS.items():
        if not isinstance(obj.get(key), kind):
            raise UsageError(f"{path}: not a complete DRAEM checkpoint (no {key})")
    size, scale = obj["config"].get("size"), obj["config"].get("scale", "square")
    if not isinstance(size, int) or size <= 0 or size % 32:
        raise UsageError(f"{path}: not a complete DRAEM checkpoint (config size {size!r}: not a multiple of 32)")
    if scale not in ("square", "native", "auto") and not (isinstance(scale, int) and scale >= 32):
        raise UsageError(f"{path}: not a complete DRAEM checkpoint (config scale {scale!r})")
    zoom = obj["config"].get("scale_factor")
    if scale == "auto" and not (isinstance(zoom, float) and 0 < zoom < float("inf")):
        raise UsageError(f"{path}: not a complete DRAEM checkpoint (config scale auto, scale_factor {zoom!r})")


def _unwrap(obj, path, kind):
    """(state_dict, meta) from one of our checkpoints or a raw state dict."""
    if not isinstance(obj, dict):
        raise UsageError(f"{path} is not a DRAEM checkpoint (a {type(obj).__name__})")
    if "format_version" in obj:
        if obj.get("kind") != kind:
            raise UsageError(f"{path} holds a {obj.get('kind')} network, expected the {kind} one "
                             f"(are the two files swapped?)")
        check_ours(obj, path)
        return obj["state_dict"], obj
    if all(isinstance(v, torch.Tensor) for v in obj.values()) and obj:
        return obj, None
    raise UsageError(f"{path} is not a DRAEM checkpoint (unknown layout)")


def load_pair(checkpoint_path, base):
    """Rebuild the DRAEM module from a checkpoint pair; returns (model on CPU in eval mode, meta dict).

    meta: config (size, widths, grayscale ...), calibration (threshold or None), original (bool), pair_id (ours).
    """
    rec_path, seg_path = find_pair(checkpoint_path, base)
    rec_sd, rec_meta = _unwrap(safe_load(rec_path), rec_path, "reconstructive")
    seg_sd, seg_meta = _unwrap(safe_load(seg_path), seg_path, "discriminative")
    check_same_pair(rec_path, seg_path, rec_meta, seg_meta)
    try:
        rec_w = rec_sd["encoder.block1.0.weight"].shape[0]
        seg_w = seg_sd["encoder_segment.block1.0.weight"].shape[0]
        in_ch = rec_sd["encoder.block1.0.weight"].shape[1]
    except KeyError:
        raise UsageError(f"{rec_path} / {seg_path}: not DRAEM network weights (missing encoder keys)") from None
    model = DRAEM(rec_base_width=rec_w, seg_base_width=seg_w, in_channels=in_ch)
    try:
        model.reconstructive.load_state_dict(rec_sd, strict=True)
        model.discriminative.load_state_dict(seg_sd, strict=True)
    except RuntimeError as e:
        raise UsageError(f"{rec_path.name}/{seg_path.name} do not fit the DRAEM networks: "
                         f"{str(e).splitlines()[0][:160]}") from None
    if rec_meta is None:  # the authors' release: 256 px RGB, no calibration
        meta = {"config": {"size": 256, "rec_base_width": rec_w, "seg_base_width": seg_w, "in_channels": in_ch,
                           "grayscale": False},
                "calibration": {"threshold": None, "rule": "none (original checkpoint)"}, "original": True}
    else:
        meta = {"config": rec_meta["config"], "calibration": rec_meta["calibration"], "original": False,
                "pair_id": rec_meta["pair_id"], "prior": seg_meta.get("prior")}
        model.reconstructive.residual = bool(meta["config"].get("rec_residual", False))  # pairs before: False
    return model.eval(), meta
