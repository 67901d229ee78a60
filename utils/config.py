"""What a training run is made of, in one visible place: the `Config` dataclass, its size presets and recipes.

    cfg = Config.build(preset="cpu", recipe="ours", epochs=5)   # preset and recipe values, then overrides

train.py's flags override fields (their --help defaults are these values for the chosen --preset and --recipe);
every checkpoint stores `cfg.to_dict()` (plain types, so `torch.load(weights_only=True)` reads it back).
"""
import dataclasses
from dataclasses import dataclass

PHOTOMETRIC = ("brightness", "contrast", "gamma", "blur", "noise")  # utils/synthesis/simulation.py jitter kinds

# Sizes. "cpu" is the measured CPU preset (docs/results.md "The CPU preset"); "paper" is DRAEM's.
PRESETS = {
    "paper": dict(size=256, rec_base_width=128, seg_base_width=64, bs=8, epochs=700),
    "cpu": dict(size=128, rec_base_width=16, seg_base_width=8, bs=8, epochs=20),
}
# Anomaly simulation, image score and init. "paper" is the method as published; "ours" adds what measurement
# kept (docs/training.md): cracks and pits (DefectSynthesizer), photometric jitter, the mean of the hottest 0.3%
# of the map as the image score, the mean-filter kernel scaled with the image size, the focal prior of the head,
# and the pretrained feature prior fused with DRAEM's map (model/feature_prior.py; prior "none": DRAEM alone).
RECIPES = {
    "paper": dict(jitter=(), score_top_fraction=0.0, scaled_kernel=False, anomaly_prior=None, prior="none"),
    "ours": dict(jitter=PHOTOMETRIC, score_top_fraction=0.003, scaled_kernel=True, anomaly_prior=0.01,
                 prior="features"),
}


@dataclass
class Config:
    # data
    data_path: str | None = None  # None: the built-in demo
    obj_id: int = -1
    anomaly_source_path: str | None = None  # None: procedural textures
    size: int = 128
    scale: str | int = "square"  # "square", "native" or a longer side N
    grayscale: str = "auto"  # grey anomalies: "auto" (when the images are grey), "on", "off"
    val_fraction: float = 0.1
    target_false_reject: float = 0.02  # docs/thresholds.md: why 2%
    workers: int = 0  # DataLoader workers for the one-time decoding
    max_pixels: int = 89_478_485  # larger training images are skipped, from the header
    # model
    preset: str = "cpu"
    rec_base_width: int = 16
    seg_base_width: int = 8
    # optimisation
    lr: float = 0.0001  # Adam, as the paper; x0.2 at 80% and 90% of the steps
    bs: int = 8
    epochs: int = 20
    max_minutes: float | None = None
    fill_budget: bool = False  # True: --max_minutes alone ends the run (train.py: no --epochs given); epochs names it
    amp: str = "auto"
    channels_last: bool = False
    seed: int = 0
    # recipe
    recipe: str = "ours"
    jitter: tuple = PHOTOMETRIC
    score_top_fraction: float = 0.003
    scaled_kernel: bool = True
    anomaly_prior: float | None = 0.01
    prior: str = "features"  # "features": ImageNet feature novelty fused with DRAEM's map; "none": DRAEM alone
    # output
    checkpoint_path: str = "./checkpoints/"
    log_path: str = "./logs/"
    val_every: int = 0  # validate and checkpoint every N steps (0: every epoch)
    resume: bool = False
    stop_after_epoch: int | None = None
    gpu_id: int = 0

    @classmethod
    def build(cls, preset="cpu", recipe="ours", **overrides):
        """The preset's sizes and the recipe's levers, then `overrides` (unknown names: TypeError)."""
        return cls(**{**PRESETS[preset], **RECIPES[recipe], "preset": preset, "recipe": recipe, **overrides})

    def to_dict(self):
        """Plain types only (tuples as lists), for checkpoints and config.json."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


FIELDS = tuple(f.name for f in dataclasses.fields(Config))
