"""utils/training/validation.py: training's synthetic validation pass (tiny, seeded, CPU)."""
import pytest
import torch

from model.model_unet import Scorer
from utils.evaluation.metrics import reconstruction_r2
from utils.training.validation import validate


class FlatDraem(torch.nn.Module):
    """A stand-in DRAEM: reconstructs every image as mid-grey and sees no defect (logits favour 'good')."""

    def forward(self, images):  # (B, 3, S, S) -> (B, 3, S, S), (B, 2, S, S)
        logits = torch.stack([torch.ones_like(images[:, 0]), torch.zeros_like(images[:, 0])], 1)
        return torch.full_like(images, 0.5), logits


def test_validate_gives_the_reconstruction_r2_of_the_good_half_from_the_same_pass():
    good = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    defective = torch.zeros(2, 3, 16, 16)  # R2 undefined there: must not enter the mean
    val = {"images": torch.cat([good, defective]), "masks": torch.zeros(5, 1, 16, 16),
           "labels": torch.tensor([0.0, 0, 0, 1, 1]), "n_normal": 3}
    metrics, _ = validate(Scorer(FlatDraem(), kernel=3), val, bs=2, target_false_reject=0.02)
    expected = reconstruction_r2(torch.full_like(good, 0.5), good)
    assert metrics["val_rec_r2"] == pytest.approx(expected.mean()) and expected.mean() < 0
    assert metrics["val_rec_r2_min"] == pytest.approx(expected.min())
