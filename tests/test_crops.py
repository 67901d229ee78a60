"""utils/crops.py: images at the working scale, seeded random crops, fixed validation crops."""
import torch
from torch.utils.data import DataLoader

from utils.data_loader import RandomCrops, crops_per_image, validation_crops


def _images():
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
            for shape in ((3, 160, 640), (3, 100, 90), (3, 40, 300))]


def test_crops_are_seeded_per_epoch_and_cover_each_image_by_area():
    images = _images()
    ds = RandomCrops(images, 64, seed=3)
    assert [crops_per_image(im, 64) for im in ds.images] == [25, 2, 5]  # the 40 px image is padded to 64
    assert len(ds) == 32 and all(ds[k][0].shape == (3, 64, 64) and ds[k][0].dtype == torch.uint8
                                 for k in range(len(ds)))
    again = RandomCrops(images, 64, seed=3)
    assert all(torch.equal(ds[k][0], again[k][0]) for k in range(len(ds)))  # same seed, same crops
    first = torch.stack([ds[k][0] for k in range(len(ds))])
    ds.set_epoch(1)
    assert not torch.equal(first, torch.stack([ds[k][0] for k in range(len(ds))]))  # a new epoch, new crops
    ds.set_epoch(0)  # a resumed run at epoch 0 sees epoch 0's crops again
    assert torch.equal(first, torch.stack([ds[k][0] for k in range(len(ds))]))


def test_crops_are_taken_from_the_image():
    image = torch.arange(100 * 200, dtype=torch.int32).reshape(1, 100, 200).expand(3, -1, -1)
    ds = RandomCrops([image], 32, seed=0)
    for k in range(len(ds)):
        crop = ds[k][0][0]
        y, x = divmod(int(crop[0, 0]), 200)
        assert torch.equal(crop, image[0, y:y + 32, x:x + 32])


def test_loader_batches_crops_like_a_tensor_dataset():
    loader = DataLoader(RandomCrops(_images(), 32, seed=0), batch_size=4, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    (batch,) = next(iter(loader))
    assert batch.shape == (4, 3, 32, 32) and batch.dtype == torch.uint8


def test_validation_crops_fixed_and_capped():
    images = _images()
    a, b = validation_crops(images, 64, seed=1234), validation_crops(images, 64, seed=1234)
    assert a.shape == (4 + 2 + 4, 3, 64, 64) and torch.equal(a, b)
    assert validation_crops([], 64, seed=0).shape == (0, 3, 64, 64)

