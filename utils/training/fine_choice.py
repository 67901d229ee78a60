"""The output map's fine evidence, fitted and weighted per pair after the prior's bank, on simulated defects.

The fused map is as coarse as the prior's feature grid (stride 8 of its working image): around a 1-2 px crack its
blob is ten times wider than the crack. The backbone's first block sees the crack (model/feature_prior.py
FineEvidence) but also every grain of a grainy surface, so whether and how much it may reshape the map is a
property of the part: on the demo's brushed strip weight 0.5 lifts pixel AP from 0.43 to 0.82, on MPDD's plates
0.25 is best, on MTD's grainy tiles anything above 0 loses. The pair decides itself on held-out good images with
simulated thin lines and smoothed spots (utils/synthesis/validation_defects.py, another family than training's):
the weight of FINE_WEIGHTS whose output map has the highest pixel AP + AUPRO there, measured on the novelty's own
map (DRAEM's trained on simulated defects; the prior never saw any). A few seconds on 2 cores (docs/prior.md).
"""
import logging
import time

import numpy as np
import torch

from model.feature_prior import FINE_QUANTILE, FineEvidence, guided_sharpen
from utils.evaluation.metrics import aupro, pixel_ap
from utils.synthesis.validation_defects import DEFECTS

log = logging.getLogger(__name__)

FINE_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)  # candidates, 0 first: a tie keeps the map as the prior made it
FIT_IMAGES = 200  # training images the fine Gaussian is estimated from (at most)
CHOICE_IMAGES = 24  # held-out good images, each with one simulated defect of each kind
SCALE_PIXELS = 200_000  # held-out pixels the unit's quantile is taken over (at most)


@torch.no_grad()
def fit_fine(fusion, train_images, held_images, guide, seed=0):
    """A FineEvidence for `fusion` (PriorFusion whose prior sees whole images) with its weight chosen, and the table
    {weight: (pixel AP, AUPRO)} on the simulated defects. Images: uint8 (3, H, W) at the working scale, on the
    prior's device; guide: the radius of the output map's guided sharpening (config map_guide)."""
    t0, backbone, device = time.time(), fusion.features.backbone, fusion.features.bank.device
    as_float = lambda im: im[None].to(device).float() / 255  # (1, 3, H, W)
    fine = FineEvidence.fit(backbone, (as_float(im)[0] for im in train_images[:FIT_IMAGES]), seed).to(device)
    d = torch.cat([fine.distance(backbone, as_float(im)).flatten() for im in held_images])
    g = torch.Generator().manual_seed(seed)
    d = d.cpu()[torch.randperm(d.numel(), generator=g)[:SCALE_PIXELS]]
    fine.scale = max(float(torch.quantile(d.float(), FINE_QUANTILE)), 1e-6)
    rng = np.random.default_rng(seed)
    masks, novelty, fines, images = [], [], [], []
    for im in held_images[:CHOICE_IMAGES]:
        clean = (im.float() / 255).permute(1, 2, 0).cpu().numpy()  # (H, W, 3)
        for make in DEFECTS:
            dirty, mask = make(rng, clean)
            x = torch.from_numpy(dirty).permute(2, 0, 1)[None].to(device)  # (1, 3, H, W)
            masks.append(mask)
            novelty.append(fusion.alone(fusion.novelty(x)))  # (1, H, W)
            fines.append(fine(backbone, x))
            images.append(x)
    table = {}
    for w in FINE_WEIGHTS:
        maps = [n * f ** w if w else n for n, f in zip(novelty, fines)]
        maps = [guided_sharpen(m, x, guide)[0] if guide else m[0] for m, x in zip(maps, images)]
        maps = [m.cpu().numpy() for m in maps]
        table[w] = (pixel_ap(masks, maps), aupro(masks, maps))
    fine.weight = max(FINE_WEIGHTS, key=lambda w: sum(table[w]))  # the first of equals: the smallest weight
    log.info("fine evidence: weight %.2f chosen on %d simulated defects in %.1fs (pixel AP + AUPRO: %s)", fine.weight,
             len(masks), time.time() - t0, ", ".join(f"{w:g}: {ap:.3f} + {pro:.3f}" for w, (ap, pro) in table.items()))
    return fine, table
