"""DRAEM's anomaly simulation, batched in torch.

Per sample this is the authors' `MVTecDRAEMTrainDataset.transform_image` (data_loader.py): maybe rotate the
clean image, threshold a rotated Perlin noise map into a mask, paste a texture that went through three random
augmenters into the mask with opacity 1 - beta; half of the samples stay normal. Here it runs on a whole
batch on the training device, which is ~10x faster than the original numpy/imgaug code on one CPU core.

Recipes: "paper" is `AnomalySynthesizer`; "ours" (`DefectSynthesizer`) also draws thin cracks and small pits
(utils/defect_shapes.py). The parts: utils/augmenters.py (the ten augmenters), utils/textures.py (texture bank,
procedural textures), utils/perlin.py (mask noise); `python -m utils.sample_grid` draws a grid of samples.
"""
import torch
import torch.nn.functional as F

from utils.augmenters import augment_textures, augment_textures_, luminance, rotate
from utils.defect_shapes import mixed_masks
from utils.perlin import perlin_noise, random_perlin_scales
from utils.sampling import rand, randint, uniform
from utils.textures import procedural_textures


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
