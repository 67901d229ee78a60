"""Training's synthetic validation: held-out good images with simulated defects (built once, the same in every
run), scored with the one tiled scoring path; image AUROC, pixel AP and the threshold on the good ones."""

import numpy as np
import torch

from model.model_unet import with_prior
from utils.evaluation.metrics import image_auroc, pixel_ap, reconstruction_r2
from utils.evaluation.thresholds import calibrate_threshold
from utils.images.tiles import predict


def build_validation(images, synthesizer, device, seed):
    """A fixed synthetic validation set: each held-out good image once clean, once with a simulated defect."""
    if len(images) == 0:
        return None
    g = torch.Generator(device=device).manual_seed(seed)
    clean = images.to(device).float() / 255
    out = synthesizer(clean, g)
    x = torch.cat([clean, out["augmented_image"]])
    masks = torch.cat([torch.zeros_like(out["anomaly_mask"]), out["anomaly_mask"]])
    labels = torch.cat([torch.zeros(len(clean), device=device), out["has_anomaly"]])
    return {"images": x, "masks": masks, "labels": labels, "n_normal": len(clean)}


def validate(scorer, val, bs, target_false_reject, prior=None, novelty=None):
    """Image AUROC and pixel AP on the synthetic validation set, the reconstruction's R² on its good images (mean
    and min, utils/evaluation/metrics.py `reconstruction_r2`), plus the calibration from its normal half.

    Scored in fp32 whatever the training precision: the threshold must fit the scores detect.py computes.
    scorer: DRAEM alone; prior (PriorFusion) and novelty (its maps of val["images"], which are fixed, so computed
    once per run): the DRAEM maps are fused as the Scorer with this prior fuses them (one tile per image).
    """
    scorer.eval()
    images, tile, n_normal = val["images"], val["images"].shape[-1], val["n_normal"]
    scores, maps, recs = [], [], []
    for i in range(0, len(images), bs):
        out = predict(scorer, list(images[i:i + bs]), tile, images.device, bs, with_reconstruction=i < n_normal)
        recs += [r.cpu() for r in out["reconstruction"][:max(0, n_normal - i)]]  # (3, S, S) of the good images
        batch = torch.stack(out["anomaly_map"])  # (B, S, S)
        with torch.inference_mode():
            batch = with_prior(prior, batch, novelty=None if prior is None else novelty[i:i + bs].to(batch.device))
        scores += list(scorer.score(batch).cpu())
        maps += list(batch.cpu())
    scorer.train()
    scores, maps = torch.stack(scores), torch.stack(maps)
    labels, masks = val["labels"].cpu().numpy(), val["masks"][:, 0].cpu().numpy()
    r2 = reconstruction_r2(torch.stack(recs), images[:n_normal].cpu())  # (n_normal,)
    r2 = r2[np.isfinite(r2)]  # a flat image has no variance to explain
    rec = {"val_rec_r2": float(r2.mean()), "val_rec_r2_min": float(r2.min())} if r2.size else {}
    return ({"val_image_auroc": image_auroc(labels, scores.numpy()), "val_pixel_ap": pixel_ap(masks, maps.numpy()),
             **rec}, calibrate_threshold(scores[:n_normal], target_false_reject))
