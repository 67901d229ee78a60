"""Image reading and datasets.

One reader (`read_image`) is used by training, validation, detection and evaluation, so every image goes
through the same decoding and resizing: 8/16-bit, gray/RGB/RGBA, jpg/png/bmp/tif, any size -> float RGB in [0, 1].

Training data is only normal images, decoded once into a uint8 tensor (`load_images`); the anomalies are
synthesised per *batch* on the training device by `utils.synthesis` (see utils/engine.py), so the datasets here
stay simple and fast.
"""
import logging
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from utils.image_size import check_pixels
from utils.runtime import UsageError, seed_worker
from utils.tiling import SQUARE, to_working_scale

log = logging.getLogger(__name__)

MIN_HELD_OUT = 30  # good images held out for the threshold when the data allow (README "Choosing the threshold")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


def list_images(folder):
    """All image files below `folder` (any depth), sorted for reproducibility."""
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _decode(path, flags):
    # cv2.imread cannot open non-ASCII paths on some platforms; decoding the bytes always works.
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError:
        return None
    if not data.size:
        return None
    check_pixels(path, data)  # from the header, before cv2 allocates the decoded image
    return cv2.imdecode(data, flags)


def read_image(path, size=None):
    """Read an image as a float tensor (3, H, W) in [0, 1], RGB, resized to (size, size) if given.

    Grayscale is replicated to 3 channels (the networks take 3), alpha is dropped, 16-bit is scaled by 65535.
    Raises ValueError naming the file when it cannot be decoded.
    """
    img = _decode(path, cv2.IMREAD_UNCHANGED)
    if img is None or img.ndim not in (2, 3):
        raise ValueError(f"cannot read image file {path}")
    return image_to_tensor(img, size, bgr=True)


def image_to_tensor(img, size=None, bgr=False):
    """An image array (H, W) or (H, W, 1|3|4), uint8 / uint16 / float in [0, 1] -> float tensor (3, H, W) in
    [0, 1], RGB, resized to (size, size) if given. bgr: the channels are in OpenCV's order (as cv2.imread gives)."""
    img = np.asarray(img)
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (1, 3, 4)):
        raise ValueError(f"expected an image array (H, W) or (H, W, 1|3|4), got shape {img.shape}")
    scale = 65535.0 if img.dtype == np.uint16 else 255.0
    if img.dtype not in (np.uint8, np.uint16):  # float TIFFs etc.: assume [0, 1]
        img, scale = img.astype(np.float32), 1.0
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    elif img.shape[2] == 1:
        img = cv2.cvtColor(img[:, :, 0], cv2.COLOR_GRAY2RGB)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB if bgr else cv2.COLOR_RGBA2RGB)
    elif bgr:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if size is not None:
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    img = img.astype(np.float32)
    img /= scale  # in place: a large image is not copied twice more
    np.clip(img, 0.0, 1.0, out=img)
    return torch.from_numpy(img).permute(2, 0, 1).contiguous()


def read_mask(path, size):
    """Ground-truth mask as a float tensor (1, H, W) in {0, 1}; size: an int (square) or (H, W).

    Resized by nearest neighbour (no blur, no new values), for every working scale.
    """
    m = _decode(path, cv2.IMREAD_GRAYSCALE)
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
    """Seeded shuffle, then hold out round(n * val_fraction) files, at least min(MIN_HELD_OUT, max(3, n // 3))."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(files), generator=g).tolist()
    n_val = round(len(files) * val_fraction) if val_fraction > 0 else 0
    if val_fraction > 0:  # the threshold's uncertainty shrinks with the held-out count: take enough
        n_val = max(n_val, min(MIN_HELD_OUT, max(3, len(files) // 3)))  # 3: the fewest calibration.fit_threshold uses
    n_val = max(0, min(n_val, len(files) - 2))  # keep at least 2 images for training
    val = sorted(files[i] for i in order[:n_val])
    return sorted(files[i] for i in order[n_val:]), val


def read_at_scale(path, size, scale=SQUARE):
    """An image file as float (3, H, W) in [0, 1] at a working scale: (size, size) for "square", else as
    utils.tiling.to_working_scale (the image's own pixels, or its longer side resized to N)."""
    if scale == SQUARE:
        return read_image(path, size)
    return to_working_scale(read_image(path), scale, size)


class Uint8Images(Dataset):
    """Training images as uint8 (3, size, size) (or (3, H, W) at a tiled working scale), or None for a file that
    cannot be decoded (warned once)."""

    def __init__(self, files, size, scale=SQUARE):
        self.files, self.size, self.scale = files, size, scale

    def __len__(self):
        return len(self.files)

    def __getitem__(self, idx):
        try:
            return (read_at_scale(self.files[idx], self.size, self.scale) * 255).round().to(torch.uint8)
        except ValueError as e:
            log.warning("skipping %s", e)
            return None


def _keep_readable(batch):
    return [x for x in batch if x is not None]


def load_images_at_scale(files, size, workers, scale=SQUARE):
    """Decode every image once: a list of uint8 tensors (3, H_i, W_i) at the working scale (images of different
    sizes cannot be stacked). Unreadable files are skipped with one warning each."""
    loader = DataLoader(Uint8Images(files, size, scale), batch_size=32 if scale == SQUARE else 4,
                        num_workers=workers, worker_init_fn=seed_worker, collate_fn=_keep_readable)
    return [x for batch in loader for x in batch]


def load_images(files, size, workers):
    """Decode every image once into a uint8 tensor (N, 3, size, size): epochs then cost no decoding.

    Unreadable files are skipped with one warning each.
    """
    images = load_images_at_scale(files, size, workers)
    return torch.stack(images) if images else torch.zeros(0, 3, size, size, dtype=torch.uint8)


class MVTecTestDataset(Dataset):
    """Test split of an MVTec AD class: `test/<type>/*` with masks at `ground_truth/<type>/<stem>_mask.*`.

    Returns dict(image (3,H,W), mask (1,H,W), label 0/1, type str, path str); `good` images get an empty mask.
    (H, W) is (size, size) for scale "square", else the image's shape at that working scale (utils/tiling.py).
    """

    def __init__(self, class_dir, size, scale=SQUARE):
        self.class_dir, self.size, self.scale = Path(class_dir), size, scale
        test_dir = self.class_dir / "test"
        if not test_dir.is_dir():
            raise FileNotFoundError(f"no test folder in {class_dir} (expected MVTec layout: test/<type>/*)")
        self.samples = []  # (path, type, mask path or None)
        missing = []
        for type_dir in sorted(p for p in test_dir.iterdir() if p.is_dir()):
            for f in list_images(type_dir):
                mask = None if type_dir.name == "good" else self._find_mask(type_dir.name, f)
                if type_dir.name != "good" and mask is None:
                    missing.append(f)
                self.samples.append((f, type_dir.name, mask))
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
        image = read_at_scale(path, self.size, self.scale)
        shape = tuple(image.shape[1:])  # (H, W)
        if mask_path is None:  # a good image, or a defect image without a mask (its pixel metrics are dropped)
            mask = torch.zeros(1, *shape)
        else:
            mask = read_mask(mask_path, shape)
        label = 0 if defect_type == "good" else 1
        return {"image": image, "mask": mask, "label": label, "type": defect_type, "path": str(path)}
