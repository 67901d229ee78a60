"""Class folders, the train/held-out split, crops and datasets: what training and evaluation read.

Every image is read by the one reader, utils/images/reading.py `read_image` (pixel guard, 8/16 bit, grey/RGB, working
scale), so training sees its images exactly as detection does. Training data is only normal images, decoded once
into a uint8 tensor (`load_images`); the anomalies are synthesised per *batch* on the training device by
`utils.synthesis.simulation` (see utils/training/engine.py), so the datasets here stay simple and fast.
"""
import logging
import os
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from utils.images.reading import DEFAULT_MAX_PIXELS, SQUARE, decode_image_file, read_image, special_file_kind
from utils.images.tiles import pad_to_tile
from utils.runtime import UsageError, display_name, seed_worker, warn_ignored

log = logging.getLogger(__name__)

MIN_HELD_OUT = 30  # good images held out for the threshold when the data allow (docs/thresholds.md)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


def list_images(folder):
    """Every file below `folder` named as an image (any depth, symlinked folders not followed), sorted for
    reproducibility. Nothing is skipped silently: a folder that cannot be read is named in a warning, and what
    is not a regular image file (a FIFO, a device, a dangling link) is listed, so that the reader refuses it by
    name (utils/images/reading.py `decode_image_file`, which never opens it) and it counts as not inspected."""
    def unreadable(err):
        log.warning("cannot read folder %s (%s): its images are not inspected", display_name(err.filename),
                    err.strerror)
    # os.walk puts folders (and links to folders) in its second list: `names` are the rest
    files = (Path(root) / name for root, _, names in os.walk(folder, onerror=unreadable) for name in names)
    return sorted(p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS)


def list_test_images(test_dir):
    """[(defect type, image file)] of an MVTec-style test/ folder: test/<type>/..., sorted."""
    types = sorted(p for p in Path(test_dir).iterdir() if p.is_dir())
    return [(t.name, f) for t in types for f in list_images(t)]


def _without_special_files(files, what):
    """`files` less the FIFOs, devices and sockets among them (links followed), each named in a warning and never
    opened: for a labelled split, where an image that cannot be read otherwise ends the run."""
    kept = []
    for f in files:
        kind = special_file_kind(f)
        if kind is None:
            kept.append(f)
        else:
            log.warning("skipping %s: %s, not an image file (not opened)", display_name(f), kind)
    if len(kept) < len(files):
        log.warning("%d of %d %s inspected (warnings above)", len(kept), len(files), what)
    return kept


def read_mask(path, size):
    """Ground-truth mask as a float tensor (1, H, W) in {0, 1}; size: an int (square) or (H, W).

    Resized by nearest neighbour (no blur, no new values), for every working scale.
    """
    m = decode_image_file(path, cv2.IMREAD_GRAYSCALE, DEFAULT_MAX_PIXELS)
    if m is None:
        raise ValueError(f"cannot read mask file {path}")
    h, w = (size, size) if isinstance(size, int) else size
    if m.shape != (h, w):
        m = cv2.resize(m, (w, h), interpolation=cv2.INTER_NEAREST)
    return torch.from_numpy((m > 127).astype(np.float32))[None]


def is_grayscale(image, tol=2.0 / 255):
    """True when all channels of a (3, H, W) or (B, 3, H, W) image are (nearly) equal."""
    return bool((image - image.mean(dim=-3, keepdim=True)).abs().max() <= tol)


def resolve_classes(data_path, obj_id):
    """[(class name, folder of good images)] from --data_path / --obj_id."""
    path = Path(data_path)
    if not path.is_dir():
        raise UsageError(f"--data_path {path} is not a folder")
    classes = sorted(p.name for p in path.iterdir() if (p / "train" / "good").is_dir())
    if obj_id != -1 and not classes:  # -1 is the default
        warn_ignored(f"--obj_id {obj_id}", f"--data_path {display_name(path)} is one class folder")
    if path.name == "good" and path.parent.name == "train":
        return [(path.parent.parent.name or "custom", path)]
    if (path / "train" / "good").is_dir():
        return [(path.name, path / "train" / "good")]
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
    """Seeded shuffle, then hold out round(n * val_fraction) files, at least min(MIN_HELD_OUT, max(3, n // 3))."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(files), generator=g).tolist()
    n_val = round(len(files) * val_fraction) if val_fraction > 0 else 0
    if val_fraction > 0:  # the threshold's uncertainty shrinks with the held-out count: take enough
        n_val = max(n_val, min(MIN_HELD_OUT, max(3, len(files) // 3)))  # 3: the fewest calibration.fit_threshold uses
    n_val = max(0, min(n_val, len(files) - 2))  # keep at least 2 images for training
    val = sorted(files[i] for i in order[:n_val])
    return sorted(files[i] for i in order[n_val:]), val


class Uint8Images(Dataset):
    """Training images as uint8 (3, size, size) (or (3, H, W) at a tiled working scale), or None for a file that
    cannot be decoded (warned once)."""

    def __init__(self, files, size, scale=SQUARE, max_pixels=DEFAULT_MAX_PIXELS):
        self.files, self.size, self.scale, self.max_pixels = files, size, scale, max_pixels

    def __len__(self):
        return len(self.files)

    def __getitem__(self, idx):
        try:
            return (read_image(self.files[idx], self.size, self.scale, self.max_pixels) * 255).round().to(torch.uint8)
        except ValueError as e:
            log.warning("skipping %s", e)
            return None


def _keep_readable(batch):
    return [x for x in batch if x is not None]


def load_images_at_scale(files, size, workers, scale=SQUARE, max_pixels=DEFAULT_MAX_PIXELS):
    """Decode every image once: a list of uint8 tensors (3, H_i, W_i) at the working scale (images of different
    sizes cannot be stacked). Unreadable files are skipped with one warning each."""
    loader = DataLoader(Uint8Images(files, size, scale, max_pixels), batch_size=32 if scale == SQUARE else 4,
                        num_workers=workers, worker_init_fn=seed_worker, collate_fn=_keep_readable)
    images = [x for batch in loader for x in batch]
    if len(images) < len(files):
        log.warning("%d of %d images read, %d unreadable (warnings above)", len(images), len(files),
                    len(files) - len(images))
    return images


def load_images(files, size, workers, max_pixels=DEFAULT_MAX_PIXELS):
    """Decode every image once into a uint8 tensor (N, 3, size, size): epochs then cost no decoding.

    Unreadable files are skipped with one warning each.
    """
    images = load_images_at_scale(files, size, workers, SQUARE, max_pixels)
    return torch.stack(images) if images else torch.zeros(0, 3, size, size, dtype=torch.uint8)


class MVTecTestDataset(Dataset):
    """Test split of an MVTec AD class: `test/<type>/*` with masks at `ground_truth/<type>/<stem>_mask.*`.

    Returns dict(image (3,H,W), mask (1,H,W), label 0/1, type str, path str); `good` images get an empty mask.
    (H, W) is (size, size) for scale "square", else the image's shape at that working scale (`working_shape`).
    """

    def __init__(self, class_dir, size, scale=SQUARE, max_pixels=DEFAULT_MAX_PIXELS):
        self.class_dir, self.size, self.scale, self.max_pixels = Path(class_dir), size, scale, max_pixels
        test_dir = self.class_dir / "test"
        if not test_dir.is_dir():
            raise FileNotFoundError(f"no test folder in {class_dir} (expected MVTec layout: test/<type>/*)")
        self.samples = []  # (path, type, mask path or None)
        missing = []
        listed = list_test_images(test_dir)
        readable = set(_without_special_files([f for _, f in listed], "test images"))
        for defect_type, f in listed:
            if f not in readable:
                continue
            mask = None if defect_type == "good" else self._find_mask(defect_type, f)
            if defect_type != "good" and mask is None:
                missing.append(f)
            self.samples.append((f, defect_type, mask))
        if not self.samples:
            raise FileNotFoundError(f"no test images in {test_dir}")
        # defect types with an image lacking its mask: their pixel metrics (and the overall ones) do not exist
        self.types_without_masks = sorted({f.parent.name for f in missing})
        if missing:
            log.warning("no ground-truth mask for %d of the defect images (types: %s; e.g. %s): pixel metrics "
                        "are not available for them", len(missing), ", ".join(self.types_without_masks), missing[0])

    def _find_mask(self, defect_type, image_path):
        gt_dir = self.class_dir / "ground_truth" / defect_type
        for ext in IMAGE_EXTENSIONS:
            for cand in (gt_dir / f"{image_path.stem}_mask{ext}", gt_dir / f"{image_path.stem}{ext}"):
                if cand.is_file():
                    return cand
        return None

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, idx):
        path, defect_type, mask_path = self.samples[idx]
        image = read_image(path, self.size, self.scale, self.max_pixels)
        shape = tuple(image.shape[1:])  # (H, W)
        if mask_path is None:  # a good image, or a defect image without a mask (its pixel metrics are dropped)
            mask = torch.zeros(1, *shape)
        else:
            mask = read_mask(mask_path, shape)
        label = 0 if defect_type == "good" else 1
        return {"image": image, "mask": mask, "label": label, "type": defect_type, "path": str(path)}


def crops_per_image(image, size):
    h, w = image.shape[-2:]
    return max(1, round(h * w / size ** 2))


def _random_offsets(images, index, size, generator):
    """(len(index), 2) top-left corners, uniform over each image's valid positions."""
    limits = torch.tensor([[images[i].shape[1] - size + 1, images[i].shape[2] - size + 1] for i in index])
    return (torch.rand(len(index), 2, generator=generator, dtype=torch.float64) * limits).long()


class RandomCrops(Dataset):
    """size x size crops of a list of uint8 images (3, H_i, W_i); item k -> (crop (3, size, size) uint8,).

    A 1-tuple, like TensorDataset's items, so the training loop reads `for (batch,) in loader` either way.
    """

    def __init__(self, images, size, seed=0, per_image=None):
        self.sources = images  # the whole images, as read (the feature prior's bank sees them whole)
        self.images = [pad_to_tile(im, size) for im in images]  # a copy only for images smaller than a tile
        self.size, self.seed = size, seed
        # crops of each image per epoch: one per size x size of its area (None), or `per_image`
        counts = [crops_per_image(im, size) if per_image is None else per_image for im in self.images]
        self.index = [i for i, n in enumerate(counts) for _ in range(n)]
        self.set_epoch(0)

    def set_epoch(self, epoch):
        """Draw this epoch's crop offsets (seeded by seed and epoch: the same after a resume)."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        self.offsets = _random_offsets(self.images, self.index, self.size, g)

    def __len__(self):
        return len(self.index)

    def __getitem__(self, k):
        y, x = self.offsets[k].tolist()
        return (self.images[self.index[k]][:, y:y + self.size, x:x + self.size],)


def validation_crops(images, size, seed, per_image=4):
    """Fixed crops of held-out images for the synthetic validation: up to `per_image` crops of each image
    (as many as its area holds), seeded. Returns uint8 (N, 3, size, size)."""
    images = [pad_to_tile(im, size) for im in images]
    index = [i for i, im in enumerate(images) for _ in range(min(per_image, crops_per_image(im, size)))]
    if not index:
        return torch.zeros(0, 3, size, size, dtype=torch.uint8)
    offsets = _random_offsets(images, index, size, torch.Generator().manual_seed(seed))
    return torch.stack([images[i][:, y:y + size, x:x + size] for i, (y, x) in zip(index, offsets.tolist())])
