"""Image reading (with the pixel guard), the working scale, class folders, the split, crops and datasets.

One reader (`read_image`) is used by training, validation, detection and evaluation, so every image goes
through the same decoding and resizing: 8/16-bit, gray/RGB/RGBA, jpg/png/bmp/tif, any size -> float RGB in [0, 1]
at a working scale ("square": size x size, the paper; "native": its own pixels; N: the longer side N px).
Before decoding, the pixel count is read from the file's header and a file above `max_pixels` is refused.

Training data is only normal images, decoded once into a uint8 tensor (`load_images`); the anomalies are
synthesised per *batch* on the training device by `utils.synthesis.simulation` (see utils/engine.py), so the datasets here
stay simple and fast.
"""
import logging
import os
import struct
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from utils.cli import UsageError, display_name, seed_worker, warn_ignored
from utils.config import Config

log = logging.getLogger(__name__)

MIN_HELD_OUT = 30  # good images held out for the threshold when the data allow (docs/thresholds.md)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
DEFAULT_MAX_PIXELS = Config.max_pixels  # larger image files are refused from their header
SQUARE, NATIVE = "square", "native"  # working scales; or an int N, the longer side in pixels


def list_images(folder):
    """All image files below `folder` (any depth, symlinked folders not followed), sorted for reproducibility.
    A folder that cannot be read is named in a warning: nothing is skipped silently."""
    def unreadable(err):
        log.warning("cannot read folder %s (%s): its images are not inspected", display_name(err.filename),
                    err.strerror)
    files = (Path(root) / name for root, _, names in os.walk(folder, onerror=unreadable) for name in names)
    return sorted(p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def scale_of(config):
    """The working scale a checkpoint config records ("square" for the authors' pairs)."""
    scale = config.get("scale", SQUARE)
    return scale if scale in (SQUARE, NATIVE) else int(scale)


def working_shape(height, width, scale, size):
    """(H, W) an image of height x width pixels has at the working scale."""
    if scale == SQUARE:
        return size, size
    if scale == NATIVE:
        return height, width
    ratio = scale / max(height, width)
    return max(1, round(height * ratio)), max(1, round(width * ratio))


def _decode(path, flags, max_pixels):
    # cv2.imread cannot open non-ASCII paths on some platforms; decoding the bytes always works.
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError:
        return None
    if not data.size:
        return None
    check_pixels(path, data, max_pixels)  # from the header, before cv2 allocates the decoded image
    return cv2.imdecode(data, flags)


def read_image(path, size=None, scale=SQUARE, max_pixels=DEFAULT_MAX_PIXELS):
    """Read an image as a float tensor (3, H, W) in [0, 1], RGB, at a working scale (`image_to_tensor`).

    Grayscale is replicated to 3 channels (the networks take 3), alpha is dropped, 16-bit is scaled by 65535.
    Raises ValueError naming the file when it cannot be decoded.
    """
    img = _decode(path, cv2.IMREAD_UNCHANGED, max_pixels)
    if img is None or img.ndim not in (2, 3):
        raise ValueError(f"cannot read image file {path}")
    return image_to_tensor(img, size, bgr=True, scale=scale)


def image_to_tensor(img, size=None, bgr=False, scale=SQUARE):
    """An image array (H, W) or (H, W, 1|3|4), uint8 / uint16 / float in [0, 1] -> float tensor (3, H, W) in
    [0, 1], RGB, at the working scale (`working_shape`: (size, size) for "square"; no size: its own pixels),
    resized by area in the array's own dtype.
    bgr: the channels are in OpenCV's order (as cv2.imread gives)."""
    img = np.asarray(img)
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (1, 3, 4)):
        raise ValueError(f"expected an image array (H, W) or (H, W, 1|3|4), got shape {img.shape}")
    norm = 65535.0 if img.dtype == np.uint16 else 255.0
    if img.dtype not in (np.uint8, np.uint16):  # float TIFFs etc.: assume [0, 1]
        img, norm = img.astype(np.float32), 1.0
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    elif img.shape[2] == 1:
        img = cv2.cvtColor(img[:, :, 0], cv2.COLOR_GRAY2RGB)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB if bgr else cv2.COLOR_RGBA2RGB)
    elif bgr:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    h, w = working_shape(*img.shape[:2], NATIVE if size is None else scale, size)
    if (h, w) != img.shape[:2]:
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
    img = img.astype(np.float32)
    img /= norm  # in place: a large image is not copied twice more
    np.clip(img, 0.0, 1.0, out=img)
    return torch.from_numpy(img).permute(2, 0, 1).contiguous()


def pad_to_tile(image, tile):
    """(C, H, W) -> (C, max(H, tile), max(W, tile)): reflection at the bottom and right, so the original
    pixels keep their coordinates. Works for any dtype; repeats the reflection when the image is tiny."""
    h, w = image.shape[-2:]
    pad_h, pad_w = max(0, tile - h), max(0, tile - w)
    if not pad_h and not pad_w:
        return image
    mode = "reflect" if min(h, w) > 1 else "edge"  # a 1-pixel side has nothing to reflect
    padded = np.pad(image.numpy(), ((0, 0), (0, pad_h), (0, pad_w)), mode=mode)
    return torch.from_numpy(padded)


def read_mask(path, size):
    """Ground-truth mask as a float tensor (1, H, W) in {0, 1}; size: an int (square) or (H, W).

    Resized by nearest neighbour (no blur, no new values), for every working scale.
    """
    m = _decode(path, cv2.IMREAD_GRAYSCALE, DEFAULT_MAX_PIXELS)
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
    return [x for batch in loader for x in batch]


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
        image = read_image(path, self.size, self.scale, self.max_pixels)
        shape = tuple(image.shape[1:])  # (H, W)
        if mask_path is None:  # a good image, or a defect image without a mask (its pixel metrics are dropped)
            mask = torch.zeros(1, *shape)
        else:
            mask = read_mask(mask_path, shape)
        label = 0 if defect_type == "good" else 1
        return {"image": image, "mask": mask, "label": label, "type": defect_type, "path": str(path)}


def _png(b):
    if len(b) >= 24 and bytes(b[12:16]) == b"IHDR":
        return struct.unpack(">II", b[16:24])
    return None


def _jpeg(b):
    i = 2
    while i + 9 <= len(b):
        if b[i] != 0xFF:
            return None
        marker = b[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD9)):  # markers without a length
            i += 2
            continue
        length = struct.unpack(">H", b[i + 2:i + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOFn: frame header
            h, w = struct.unpack(">HH", b[i + 5:i + 9])
            return w, h
        i += 2 + length
    return None


def _bmp(b):
    if len(b) < 26:
        return None
    dib = struct.unpack("<I", b[14:18])[0]
    if dib == 12:  # BITMAPCOREHEADER: 16-bit sizes
        return struct.unpack("<HH", b[18:22])
    w, h = struct.unpack("<ii", b[18:26])
    return abs(w), abs(h)  # a negative height means top-down rows


def _tiff(b):
    endian = "<" if bytes(b[:2]) == b"II" else ">"
    if struct.unpack(endian + "H", b[2:4])[0] != 42:
        return None  # BigTIFF (43) and others: unknown
    offset = struct.unpack(endian + "I", b[4:8])[0]
    if offset + 2 > len(b):
        return None
    n = struct.unpack(endian + "H", b[offset:offset + 2])[0]
    size = {}
    for k in range(n):
        e = offset + 2 + 12 * k
        if e + 12 > len(b):
            return None
        tag, typ = struct.unpack(endian + "HH", b[e:e + 4])
        if tag in (256, 257):  # ImageWidth, ImageLength: SHORT (3) or LONG (4)
            size[tag] = struct.unpack(endian + ("H" if typ == 3 else "I"), b[e + 8:e + 10 if typ == 3 else e + 12])[0]
    return (size[256], size[257]) if len(size) == 2 else None


def header_size(data):
    """(width, height) from a PNG/JPEG/BMP/TIFF file's bytes (any buffer; only the header is parsed, nothing is
    decoded); None when the format is unknown or the header is unreadable."""
    b = memoryview(data).cast("B")
    head = bytes(b[:8])
    try:
        if head.startswith(b"\x89PNG\r\n\x1a\n"):
            return _png(b)
        if head.startswith(b"\xff\xd8"):
            return _jpeg(b)
        if head.startswith(b"BM"):
            return _bmp(b)
        if head[:4] in (b"II*\x00", b"MM\x00*"):
            return _tiff(b)
    except struct.error:
        return None
    return None


def check_pixels(path, data, max_pixels=DEFAULT_MAX_PIXELS):
    """ValueError naming the file when its header is unknown or it holds more than `max_pixels` pixels."""
    size = header_size(data)
    if size is None:
        raise ValueError(f"cannot read image file {path} (not a readable PNG, JPEG, BMP or TIFF header)")
    w, h = size
    if w * h > max_pixels:
        raise ValueError(f"image {path} is {w}x{h} = {w * h / 1e6:.1f} megapixels, above the limit of "
                         f"{max_pixels / 1e6:.1f} (raise it with --max_pixels)")
    return size


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

    def __init__(self, images, size, seed=0):
        self.images = [pad_to_tile(im, size) for im in images]  # a copy only for images smaller than a tile
        self.size, self.seed = size, seed
        self.index = [i for i, im in enumerate(self.images) for _ in range(crops_per_image(im, size))]
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
