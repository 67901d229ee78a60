"""DRAEM's anomaly simulation, batched in torch.

Per sample this is the authors' `MVTecDRAEMTrainDataset.transform_image` (data_loader.py): maybe rotate the
clean image, threshold a rotated Perlin noise map into a mask, paste a texture that went through three random
augmenters into the mask with opacity 1 - beta; half of the samples stay normal. Here it runs on a whole
batch on the training device, which is ~10x faster than the original numpy/imgaug code on one CPU core.

Recipes: "paper" is `AnomalySynthesizer`; "ours" (`DefectSynthesizer`) also draws thin cracks and small pits
(`crack_masks`, `pit_masks`); whole good images are jittered by `jitter_images` (normal variation is normal).
The parts: utils/synthesis/textures.py (texture bank, procedural textures, the ten augmenters, the random draws),
utils/perlin.py (mask noise).
`train.py --preview grid.png` draws a grid of samples (`samples_picture`: clean image, with defects, mask).
"""
import io
import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from utils.config import PHOTOMETRIC
from utils.perlin import perlin_noise, random_perlin_scales
from utils.synthesis.textures import augment_textures_, luminance, procedural_textures, rand, randint, rotate, uniform


def blend(image, texture, mask, beta, out=None):
    """DRAEM's paste: image outside the mask, (1 - beta) texture + beta image inside it.

    image, texture (B, 3, H, W); mask (B, 1, H, W) in {0, 1}; beta (B,) or a number; `out` may be `texture`.
    """
    beta = torch.as_tensor(beta, dtype=image.dtype, device=image.device)
    if beta.ndim == 1:
        beta = beta.view(-1, 1, 1, 1)
    # image * (1 - mask) + (1 - beta) * texture * mask + beta * image * mask, in one fused op
    return torch.lerp(image, texture, mask * (1 - beta), out=out)


class AnomalySynthesizer:
    """Turns a batch of normal images into DRAEM training samples (see the module docstring).

    texture_bank: (N, 3, S, S) uint8 from `load_texture_bank`, or None for `procedural_textures`.
    """

    def __init__(self, texture_bank=None, grayscale=False, rotate_prob=0.3, anomaly_prob=0.5, beta_max=0.8,
                 threshold=0.5):
        if texture_bank is not None and (texture_bank.dtype != torch.uint8 or texture_bank.ndim != 4
                                         or texture_bank.shape[1] != 3 or len(texture_bank) == 0):
            raise ValueError(f"texture_bank must be a non-empty (N, 3, S, S) uint8 tensor, got "
                             f"{texture_bank.dtype} {tuple(texture_bank.shape)}")
        self.texture_bank = texture_bank
        self.grayscale = grayscale
        self.rotate_prob = rotate_prob
        self.anomaly_prob = anomaly_prob
        self.beta_max = beta_max
        self.threshold = threshold

    def to(self, device):
        if self.texture_bank is not None:
            self.texture_bank = self.texture_bank.to(device)
        return self

    def masks(self, n, h, w, generator, device):
        """Thresholded, rotated Perlin noise: (n, 1, H, W) float in {0, 1}."""
        noise = perlin_noise(n, h, w, random_perlin_scales(n, generator), generator, device)[:, None]
        noise = rotate(noise, uniform(generator, n, -90.0, 90.0, device).flatten())
        return (noise > self.threshold).float()

    def textures(self, n, h, w, generator, device, batch):
        """Augmented anomaly textures (n, 3, H, W) in [0, 1]: bank images (or procedural) + 3 augmenters.

        batch: the clean images being synthesised (B, 3, H, W); unused here, a texture source for recipe ours.
        """
        if self.texture_bank is None:
            tex = procedural_textures(n, h, w, generator, device)
        else:
            pick = randint(generator, 0, len(self.texture_bank), n, self.texture_bank.device)
            tex = self.texture_bank[pick].to(device).float().div_(255)
            if tex.shape[-2:] != (h, w):
                tex = F.interpolate(tex, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
                tex = tex.clamp(0, 1)
        tex = augment_textures_(tex, generator, n_ops=3)  # tex is ours to overwrite
        if self.grayscale:
            tex = luminance(tex).repeat(1, 3, 1, 1)
        return tex

    def __call__(self, images, generator):
        """images (B, 3, H, W) float in [0, 1] -> dict(image, augmented_image, anomaly_mask, has_anomaly).

        `image` is `images` itself when no sample was rotated; `images` is never modified. The draws happen in
        the numbered order below, so a seed gives the same samples on every device.
        """
        b, _, h, w = images.shape
        device = images.device
        # 1. rotate some clean images; the rotated one is the reconstruction target
        rot = (rand(generator, b) < self.rotate_prob).nonzero().flatten().to(device)
        angles = uniform(generator, len(rot), -90.0, 90.0, device).flatten()
        image = images
        if len(rot):
            image = images.clone()
            image[rot] = rotate(images[rot], angles)
        # 2. pick the anomalous samples: only they need a mask and a texture at all
        idx = (rand(generator, b) < self.anomaly_prob).nonzero().flatten().to(device)
        mask = torch.zeros(b, 1, h, w, device=device, dtype=image.dtype)
        has_anomaly = torch.zeros(b, device=device, dtype=image.dtype)
        augmented = image.clone()
        if len(idx):
            augmented[idx], m = self.defects(image[idx], generator, images)
            mask[idx] = m
            has_anomaly[idx] = m.flatten(1).amax(dim=1)  # an empty mask makes a normal sample
        return {"image": image, "augmented_image": augmented, "anomaly_mask": mask, "has_anomaly": has_anomaly}

    def defects(self, image, generator, batch):
        """Steps 3-5 for the anomalous samples image (n, 3, H, W): (augmented image, mask (n, 1, H, W))."""
        n, _, h, w = image.shape
        m = self.masks(n, h, w, generator, image.device).to(image.dtype)  # 3. masks
        texture = self.textures(n, h, w, generator, image.device, batch).to(image.dtype)  # 4. textures
        beta = uniform(generator, n, 0.0, self.beta_max, image.device)  # 5. opacity, then paste
        return blend(image, texture, m, beta, out=texture), m


class DefectSynthesizer(AnomalySynthesizer):
    """Recipe "ours": DRAEM's simulation, with half of the Perlin blobs replaced by thin cracks and small pits."""

    def masks(self, n, h, w, generator, device):
        perlin = super().masks
        return mixed_masks(n, h, w, generator, lambda k, hh, ww: perlin(k, hh, ww, generator, device), device)


def make_synthesizer(recipe, bank, grayscale, **overrides):
    """The anomaly simulation for --recipe `recipe` ("paper": DRAEM as published)."""
    cls = AnomalySynthesizer if recipe == "paper" else DefectSynthesizer
    return cls(bank, grayscale=grayscale, **overrides)


def _rand_numpy(generator, *shape):
    """U[0, 1) as a NumPy array (OpenCV draws on the CPU)."""
    return rand(generator, *shape, device="cpu").numpy()


def crack_masks(n, h, w, generator, device=None, n_points=24):
    """Thin curved lines (scratches) and jagged branching lines (cracks): (n, 1, H, W) float {0, 1}.

    A quadratic Bezier curve of length 15-60% of the image with a random bend; half of the samples get a jagged
    random-walk offset (cracks); 0-2 shorter branches; line width 0.4-1.5% of the image (at least 1 px).
    """
    m = max(h, w)
    t = np.linspace(0, 1, n_points)[:, None]  # (K, 1)
    p = _rand_numpy(generator, n, 3, 12)  # per sample, per curve: 12 uniform numbers
    noise = _rand_numpy(generator, n, 3, n_points, 2) - 0.5
    widths = _rand_numpy(generator, n)
    masks = np.zeros((n, h, w), np.uint8)
    for i in range(n):
        anchor = None
        for c in range(3):
            if c > 0 and p[i, c, 11] < 0.5:  # branch kept with probability 1/2
                continue
            start = p[i, c, 0:2] * (w, h) if anchor is None else anchor
            length = (0.15 + 0.45 * p[i, c, 2]) * m * (1.0 if c == 0 else 0.5)
            angle = p[i, c, 3] * 2 * math.pi
            end = start + length * np.array([math.cos(angle), math.sin(angle)])
            ctrl = (start + end) / 2 + (p[i, c, 4:6] - 0.5) * length
            pts = (1 - t) ** 2 * start + 2 * (1 - t) * t * ctrl + t ** 2 * end  # (K, 2) x, y
            if p[i, c, 6] < 0.5:  # jagged crack
                pts = pts + np.cumsum(noise[i, c], axis=0) * 0.04 * length / math.sqrt(n_points)
            if anchor is None:
                main = pts
            anchor = main[int((0.25 + 0.5 * p[i, c, 7]) * (n_points - 1))]
            thickness = max(1, int(round((0.004 + 0.011 * widths[i]) * m)))
            cv2.polylines(masks[i], [np.round(pts).astype(np.int32)], False, 1, thickness, cv2.LINE_8)
    return torch.from_numpy(masks).float()[:, None].to(device or "cpu")


def pit_masks(n, h, w, generator, device=None, max_pits=4):
    """1-4 small ellipses per sample (pits, holes, spots), radius 1.5-7% of the image: (n, 1, H, W) {0, 1}."""
    m = max(h, w)
    p = _rand_numpy(generator, n, max_pits, 6)
    count = 1 + (_rand_numpy(generator, n) * max_pits).astype(int)
    masks = np.zeros((n, h, w), np.uint8)
    for i in range(n):
        for k in range(count[i]):
            cx, cy, ra, rb, ang, _ = p[i, k]
            axes = (max(1, int((0.015 + 0.055 * ra ** 2) * m)), max(1, int((0.015 + 0.055 * rb ** 2) * m)))
            cv2.ellipse(masks[i], (int(cx * w), int(cy * h)), axes, ang * 180, 0, 360, 1, -1)
    return torch.from_numpy(masks).float()[:, None].to(device or "cpu")


def mixed_masks(n, h, w, generator, perlin_fn, device=None, p_perlin=0.5, p_crack=0.25):
    """Per sample: a Perlin blob mask (from `perlin_fn(k, h, w)`) with p_perlin, a crack with p_crack, else pits."""
    device = device or generator.device
    u = torch.rand(n, generator=generator, device=generator.device).to(device)
    kind = (u >= p_perlin).long() + (u >= p_perlin + p_crack).long()  # 0 perlin, 1 crack, 2 pits
    masks = torch.zeros(n, 1, h, w, device=device)
    for k, fn in enumerate((perlin_fn, lambda m, hh, ww: crack_masks(m, hh, ww, generator, device),
                            lambda m, hh, ww: pit_masks(m, hh, ww, generator, device))):
        idx = (kind == k).nonzero().flatten()
        if len(idx):
            masks[idx] = fn(len(idx), h, w)
    return masks


GEOMETRIC = ("flip", "rot90")
KINDS = PHOTOMETRIC + GEOMETRIC
ALIASES = {"none": (), "photo": PHOTOMETRIC, "geo": GEOMETRIC, "all": KINDS}
APPLY_PROB = 0.5  # each kind is applied to a sample with this probability, independently


def parse_kinds(text):
    """'photo', 'none', 'brightness,noise,flip', 'photo,flip' -> a tuple of kind names (ValueError if unknown)."""
    kinds = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if part not in ALIASES and part not in KINDS:
            raise ValueError(f"unknown jitter {part!r}; choose from {', '.join((*ALIASES, *KINDS))}")
        kinds += [k for k in ALIASES.get(part, (part,)) if k not in kinds]
    return tuple(kinds)


def _blur(x):
    """Gaussian blur, sigma 1 px (separable 5-tap, reflect padding); (B, C, H, W) -> same."""
    t = torch.arange(5, dtype=x.dtype, device=x.device) - 2
    k = torch.exp(-t ** 2 / 2)
    k = (k / k.sum()).view(1, 1, 1, 5).expand(x.shape[1], 1, 1, 5)
    y = F.conv2d(F.pad(x, (2, 2, 0, 0), mode="reflect"), k, groups=x.shape[1])
    return F.conv2d(F.pad(y, (0, 0, 2, 2), mode="reflect"), k.transpose(2, 3), groups=x.shape[1])


def _photometric(kind, x, generator):
    """One photometric change with per-sample strength; the same for every channel (grey stays grey)."""
    n, dev = len(x), x.device
    if kind == "brightness":
        return x + uniform(generator, n, -0.1, 0.1, dev)
    if kind == "contrast":
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return (x - mean) * uniform(generator, n, -0.415, 0.415, dev).exp2() + mean  # factor 0.75 .. 1.33
    if kind == "gamma":  # gamma in [0.7, 1.4], log-uniform
        return x.clamp(1e-6, 1).pow(uniform(generator, n, -0.5, 0.5, dev).exp2())
    if kind == "blur":  # mix of the image and its blur: 0 (sharp) .. 1 (sigma 1 px)
        return torch.lerp(x, _blur(x), uniform(generator, n, 0.0, 1.0, dev))
    std = uniform(generator, n, 0.0, 0.02, dev)  # noise: Gaussian, std up to 5 grey levels, same on every channel
    noise = torch.randn(n, 1, *x.shape[2:], generator=generator, device=generator.device).to(dev)
    return x + std * noise


def _geometric(kind, x, generator):
    n = len(x)
    if kind == "flip":  # horizontal and vertical, each with probability 1/2
        r = torch.rand(n, 2, generator=generator, device=generator.device).cpu() < 0.5
        x = torch.where(r[:, 0].view(n, 1, 1, 1).to(x.device), x.flip(-1), x)
        return torch.where(r[:, 1].view(n, 1, 1, 1).to(x.device), x.flip(-2), x)
    k = torch.randint(0, 4, (n,), generator=generator, device=generator.device).cpu()
    if x.shape[-1] != x.shape[-2]:  # a quarter turn of a non-square image changes its shape: half turns only
        k = k // 2 * 2
    return torch.stack([torch.rot90(xi, int(ki), dims=(-2, -1)) for xi, ki in zip(x, k)])


def jitter_images(images, generator, kinds, prob=APPLY_PROB):
    """images (B, C, H, W) in [0, 1] -> a jittered copy, same shape, in [0, 1]; `images` is not modified.

    Each kind in `kinds` is applied to each sample with probability `prob`, in the order of KINDS.
    """
    x = images
    for kind in (k for k in KINDS if k in kinds):
        on = (torch.rand(len(x), generator=generator, device=generator.device) < prob).to(x.device)
        if not on.any():
            continue
        changed = _geometric(kind, x, generator) if kind in GEOMETRIC else _photometric(kind, x, generator)
        x = torch.where(on.view(-1, 1, 1, 1), changed, x)
    return x.clamp(0, 1) if x is not images else images


# ------------------------------------------------- a picture of samples: train.py --preview
def samples_picture(batch):
    """PNG bytes of a grid of synthesised samples: rows clean image, with simulated defects, mask; a column each."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(batch["image"])
    rows = [("clean", batch["image"]), ("with defects", batch["augmented_image"]), ("mask", batch["anomaly_mask"])]
    fig = Figure(figsize=(1.6 * n, 1.6 * 3))
    FigureCanvasAgg(fig)
    axes = fig.subplots(3, n, squeeze=False)
    for r, (name, images) in enumerate(rows):
        for c in range(n):
            ax = axes[r, c]
            img = images[c].permute(1, 2, 0).cpu().numpy()  # (H, W, 1|3)
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=80)
    return out.getvalue()
