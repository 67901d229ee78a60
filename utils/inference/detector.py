"""`Detector`: load a checkpoint pair once, then read, score and judge images (the Python API and detect.py).

    detector = Detector.from_checkpoint("checkpoints/", "DRAEM_test_0.0001_20_bs8_coil_")
    result = detector.score(image)   # {"score", "verdict", "anomaly_map", "reconstruction"}, one entry per image
"""
import logging

import numpy as np
import torch

from model.feature_prior import PriorFusion
from model.model_unet import Scorer, verdict
from utils.images.reading import DEFAULT_MAX_PIXELS, image_to_tensor, read_image, scale_of
from utils.images.tiles import count_tiles, predict
from utils.storage.pairs import load_pair

log = logging.getLogger(__name__)


RECONSTRUCTION_R2_OK = 0.5  # below it the picture says the reconstruction is not learnt yet or still rough


class Detector:
    """A loaded checkpoint pair on a device, with what the checkpoint says about size, scale, score rule and
    threshold. `bs`: tiles per forward pass; `max_pixels`: larger image files are refused (from the header)."""

    def __init__(self, model, meta, device, amp_dtype=None, bs=16, max_pixels=DEFAULT_MAX_PIXELS):
        self.device, self.bs, self.max_pixels = torch.device(device), bs, max_pixels
        prior = PriorFusion.from_state(meta["prior"]).to(self.device) if meta.get("prior") else None
        self.scorer = Scorer.from_config(model.to(self.device).eval(), meta["config"], amp_dtype, prior).eval()
        self.meta = meta
        self.size = int(meta["config"]["size"])
        self.tile = self.size  # DRAEM's tiles (None: each whole image at once)
        self.scale = scale_of(meta["config"])  # "square" (whole image resized), "native" or a longer side N
        self.threshold = meta["calibration"].get("threshold")
        self.name = None  # the pair's name, when loaded from files

    @classmethod
    def from_checkpoint(cls, checkpoint_path, base_model_name, device="cpu", amp_dtype=None, **kwargs):
        model, meta = load_pair(checkpoint_path, base_model_name)
        detector = cls(model, meta, device, amp_dtype, **kwargs)
        detector.name = base_model_name
        return detector

    @property
    def teaching(self):
        """The number of the pair's last teaching (utils/training/teach.py, `train.py --add_good`), 0: never
        taught."""
        teachings = (self.meta.get("prior") or {}).get("teachings") or []
        return teachings[-1]["teaching"] if teachings else 0

    def pair_label(self):
        """Which pair scores, for pictures and reports: its name and, when taught, its last teaching."""
        teachings = (self.meta.get("prior") or {}).get("teachings") or []
        label = self.name or "the pair"
        if teachings:
            t = teachings[-1]
            label += f" (teaching {t['teaching']}: +{t['n_images']} good images, {t['time'][:16].replace('T', ' ')})"
        return label

    @property
    def reconstruction_note(self):
        """What the picture says under "Reconstructed" when the pair's reconstruction is not worth trusting yet:
        its R² on the held-out good images at the end of training (1 - MSE / variance; the calibration records it)
        below RECONSTRUCTION_R2_OK; None when it is good, or unknown (the authors' pairs)."""
        r2 = self.meta.get("calibration", {}).get("val_rec_r2")
        if not isinstance(r2, (int, float)) or r2 >= RECONSTRUCTION_R2_OK or r2 != r2:
            return None
        state = "not learnt yet" if r2 < 0 else "still rough"
        return f"{state}: R² {r2:.2f} on held-out good images" if r2 > -10 else \
            f"{state}: R² {r2:.0f} on held-out good images"

    @property
    def map_scale_note(self):
        """What the anomaly map's values mean, for the picture's colour bar."""
        if self.scorer.prior is not None:  # the fused map: evidence / (evidence + log 1000), model/feature_prior.py
            return "0.5: as rare as the rarest 0.1% of good pixels"
        return "DRAEM's probability of a defect"

    def read(self, path):
        """An image file as (3, H, W) in [0, 1] at this checkpoint's working scale."""
        return read_image(path, self.size, self.scale, self.max_pixels)

    def predict(self, images, with_reconstruction=True, halves=False):
        """Images from `read` -> `predict`'s dict of per-image lists, on self.device (halves: also each half of a
        pair with a prior alone, utils/images/tiles.py `predict`)."""
        return predict(self.scorer, list(images), self.tile, self.device, self.bs, with_reconstruction, halves)

    @property
    def has_halves(self):
        """True for a pair with a feature prior: two evidences, DRAEM's and the novelty's, fused into its map."""
        return self.scorer.prior is not None

    def verdict(self, score):
        return verdict(score, self.threshold)

    def score(self, images):
        """Numpy in, numpy out: one RGB image (H, W) / (H, W, 1|3|4), uint8 / uint16 / float in [0, 1], any size,
        or a batch (a list, or (N, H, W, C)) -> dict(score (N,) float32, anomaly_map: a list of (H, W) float32 at
        the working scale, verdict [N x "OK" / "NG" / "n/a"]), one entry per image, also for a single image."""
        single = isinstance(images, np.ndarray) and (images.ndim == 2 or (images.ndim == 3 and images.shape[2] <= 4))
        tensors = [image_to_tensor(im, self.size, scale=self.scale) for im in ([images] if single else images)]
        out = self.predict(tensors, with_reconstruction=False)
        scores = np.array([float(s) for s in out["score"]], dtype=np.float32)
        return {"score": scores, "anomaly_map": [m.cpu().numpy() for m in out["anomaly_map"]],
                "verdict": [self.verdict(float(s)) for s in scores]}

    def batches(self, items, read=None, image_of=None):
        """Groups of (item, read(item)) worth up to `bs` tiles, at least one image each: `bs` square images, or
        one large image, so memory stays bounded by the tile batch. read: default `self.read`; an item it cannot
        read (ValueError) is skipped with a warning. image_of(record): the image in what `read` returns."""
        read = self.read if read is None else read
        group, tiles = [], 0
        for item in items:
            try:
                record = read(item)
            except ValueError as e:
                log.warning("skipping %s", e)
                continue
            n = count_tiles(*(record if image_of is None else image_of(record)).shape[-2:], self.size)
            if group and tiles + n > self.bs:
                yield group
                group, tiles = [], 0
            group.append((item, record))
            tiles += n
        if group:
            yield group

    def score_files(self, files):
        """(N,) scores of image files, read and scored as detect.py does; unreadable files are skipped with a
        warning."""
        scores = []
        for group in self.batches(files):
            scores += [float(x) for x in self.predict([im for _, im in group], with_reconstruction=False)["score"]]
        if len(scores) < len(files):
            log.warning("%d of %d images inspected, %d unreadable (warnings above)", len(scores), len(files),
                        len(files) - len(scores))
        return np.array(scores)
