"""The simulated defects the output map's fine weight is chosen on, and the choice (utils/training/fine_choice.py)."""
import numpy as np
import pytest
import torch

from model.feature_prior import PriorFusion, TailEvidence, fit_prior, load_backbone
from utils.synthesis.validation_defects import smoothed_spot, thin_line
from utils.training.fine_choice import FINE_WEIGHTS, fit_fine


def brushed(n, h=48, w=96, seed=0):
    """n uint8 images (3, h, w) of horizontal brushing: streaks along the rows, faint noise."""
    g = torch.Generator().manual_seed(seed)
    rows = 0.5 + 0.05 * torch.randn(n, 1, h, 1, generator=g)
    img = rows + 0.01 * torch.randn(n, 1, h, w, generator=g)
    return [(im.clamp(0, 1).expand(3, h, w) * 255).round().to(torch.uint8) for im in img]


@pytest.mark.parametrize("make", [thin_line, smoothed_spot])
def test_a_simulated_defect_changes_its_mask_and_nothing_far_from_it(make):
    image = np.full((60, 200, 3), 0.5, np.float32)
    out, mask = make(np.random.default_rng(3), image)
    assert out.shape == image.shape and mask.shape == image.shape[:2] and mask.dtype == bool
    changed = np.abs(out - image).max(-1) > 1e-3
    assert 0 < mask.sum() < mask.size / 4 and changed[mask].all()  # every masked pixel altered
    grown = np.zeros_like(mask)
    ys, xs = np.nonzero(mask)
    grown[max(ys.min() - 3, 0):ys.max() + 4, max(xs.min() - 3, 0):xs.max() + 4] = True
    assert not changed[~grown].any()  # nothing altered outside the defect's neighbourhood
    again, _ = make(np.random.default_rng(3), image)
    assert np.array_equal(out, again)  # seeded


def test_the_pair_chooses_the_weight_its_simulated_defects_score_best():
    """On a brushed surface a hairline is sharper in the first block than in the stride-8 grid: the choice is the
    weight of the best pixel AP + AUPRO in the table it reports, here above 0."""
    backbone = load_backbone()
    train, held = brushed(6), brushed(6, seed=1)
    prior = fit_prior([im[None].float() / 255 for im in train], side=48, area=48 * 96, coreset=500,
                      backbone=backbone)
    fusion = PriorFusion(prior, TailEvidence.fit(torch.cat([prior(im[None].float() / 255).flatten() for im in held])))
    fine, table = fit_fine(fusion, train, held, guide=8)
    assert set(table) == set(FINE_WEIGHTS) and fine.scale > 0
    assert fine.weight == max(FINE_WEIGHTS, key=lambda w: sum(table[w])) and fine.weight > 0
