"""Training data for `--scale native` / N: images at the working scale, random size x size crops per batch.

Images of different sizes cannot be stacked, so they are kept as a list of uint8 tensors (3, H_i, W_i), decoded
once by utils.data_loader.load_images_at_scale (a 640x160 RGB image is 300 KB). An epoch covers each image's area
about once: image i gives max(1, round(H_i * W_i / size**2)) crops at random offsets. The offsets of an epoch are drawn at `set_epoch`
from a generator seeded with (seed, epoch), so a run is bit-reproducible and a resumed run sees the same crops.
Images smaller than a crop are padded by reflection (utils.tiling.pad_to_tile), never stretched. The defect
simulation then runs on the crops, on the training device, as for square images.
"""
import torch
from torch.utils.data import Dataset

from utils.tiling import pad_to_tile


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
