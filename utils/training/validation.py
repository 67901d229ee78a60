"""Training's synthetic validation: held-out good images with simulated defects (built once, the same in every
run), scored with the one tiled scoring path; image AUROC, pixel AP and the threshold on the good ones."""

import numpy as np
import torch

from model.model_unet import with_prior
from utils.evaluation.metrics import image_auroc, pixel_ap, reconstruction_r2, removal_contrast
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
    and min, utils/evaluation/metrics.py `reconstruction_r2`) and its removal contrast on the defective ones
    (`removal_contrast`: how much more it changes the defect than the good surface), plus the calibration from its normal half. With a
    prior, the same two metrics of each half alone (`_draem`, `_novelty`): the three rows of evaluate.py.

    Scored in fp32 whatever the training precision: the threshold must fit the scores detect.py computes.
    scorer: DRAEM alone; prior (PriorFusion) and novelty (its maps of val["images"], which are fixed, so computed
    once per run): the DRAEM maps are fused as the Scorer with this prior fuses them (one tile per image).
    """
    scorer.eval()
    images, tile, n_normal = val["images"], val["images"].shape[-1], val["n_normal"]
    maps = {"": [], "_draem": [], "_novelty": []}  # fused (or DRAEM's without a prior), and each half
    recs = []
    for i in range(0, len(images), bs):
        out = predict(scorer, list(images[i:i + bs]), tile, images.device, bs, sharpen=False)  # scores and the
        # fusion below take the maps as detect.py scores them
        recs += [r.cpu() for r in out["reconstruction"]]  # (3, S, S)
        batch = torch.stack(out["anomaly_map"])  # (B, S, S)
        if prior is not None:
            with torch.inference_mode():
                n = novelty[i:i + bs].to(batch.device)
                maps["_draem"].append(batch.cpu())
                maps["_novelty"].append(prior.alone(n).cpu())
                batch = with_prior(prior, batch, novelty=n)
        maps[""].append(batch.cpu())
    scorer.train()
    labels, masks = val["labels"].cpu().numpy(), val["masks"][:, 0].cpu().numpy()
    metrics, scores = {}, None
    for suffix, parts in maps.items():
        if parts:
            m = torch.cat(parts)  # (N, S, S)
            s = scorer.score(m)  # (N,)
            scores = s if not suffix else scores
            metrics.update({f"val_image_auroc{suffix}": image_auroc(labels, s.numpy()),
                            f"val_pixel_ap{suffix}": pixel_ap(masks, m.numpy())})
    r2 = reconstruction_r2(torch.stack(recs[:n_normal]), images[:n_normal].cpu())  # (n_normal,)
    r2 = r2[np.isfinite(r2)]  # a flat image has no variance to explain
    rec = {"val_rec_r2": float(r2.mean()), "val_rec_r2_min": float(r2.min())} if r2.size else {}
    defective = labels[n_normal:] > 0.5  # the simulated defects: does the reconstruction remove them?
    if defective.any():
        ratio = removal_contrast(torch.stack(recs[n_normal:])[defective], images[n_normal:].cpu()[defective],
                                 masks[n_normal:][defective])
        if np.isfinite(ratio).any():
            rec["val_rec_removal"] = float(np.nanmean(ratio))
    return {**metrics, **rec}, calibrate_threshold(scores[:n_normal], target_false_reject)
