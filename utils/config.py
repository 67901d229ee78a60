"""What a training run is made of, in one visible place: the `Config` dataclass, its size presets and recipes.

    cfg = Config.build(preset="cpu", recipe="ours", epochs=5)   # preset and recipe values, then overrides

train.py's flags override fields (their --help defaults are these values for the chosen --preset and --recipe);
every checkpoint stores `cfg.to_dict()` (plain types, so `torch.load(weights_only=True)` reads it back).
"""
import dataclasses
from dataclasses import dataclass

PHOTOMETRIC = ("brightness", "contrast", "gamma", "blur", "noise")  # jitter kinds (utils/synthesis/simulation.py)

# Sizes. "cpu" is the measured CPU preset (docs/results.md "The CPU preset"); "paper" is DRAEM's.
PRESETS = {
    "paper": dict(size=256, rec_base_width=128, seg_base_width=64, bs=8, epochs=700),
    "cpu": dict(size=128, rec_base_width=16, seg_base_width=8, bs=8, epochs=20),
}
# Anomaly simulation, image score and init. "paper" is the method as published; "ours" adds what measurement
# kept (docs/training.md): cracks and pits (DefectSynthesizer), photometric jitter, the mean of the hottest 0.3%
# of the map as the image score, the mean-filter kernel scaled with the image size, the focal prior of the head,
# the pretrained feature prior fused with DRAEM's map (model/feature_prior.py; prior "none": DRAEM alone), and the
# working scale "auto": each image at its own aspect, its area brought within auto_area (utils/images/reading.py).
# rec_residual (both False; measured in docs/training.md): the reconstructive network predicts a correction.
RECIPES = {
    "paper": dict(jitter=(), score_top_fraction=0.0, scaled_kernel=False, anomaly_prior=None, prior="none",
                  scale="square", map_guide=0, rec_residual=False),
    "ours": dict(jitter=PHOTOMETRIC, score_top_fraction=0.003, scaled_kernel=True, anomaly_prior=0.01,
                 prior="features", scale="auto", map_guide=8, rec_residual=False),
}


DEFAULT_PRESET, DEFAULT_RECIPE = "cpu", "ours"  # Config(): what a CPU gets (train.py --preset auto: paper on CUDA)
AUTO = "auto"  # train.py --preset auto: resolved to a preset when the run starts (train.py resolve_preset)
_PRESET, _RECIPE = PRESETS[DEFAULT_PRESET], RECIPES[DEFAULT_RECIPE]

# detect.py and evaluate.py: fp32 by default, as the threshold was calibrated (bf16 moves scores by up to 0.01)
INFERENCE_AMP = "off"
INFERENCE_BS = 8  # images per forward pass when scoring


@dataclass
class Config:
    """Every setting of a training run. The fields marked "no flag" are set here (or derived by the run) and
    recorded in the checkpoint; the reason is given beside each."""
    # data
    data_path: str | None = None  # None: the built-in demo
    obj_id: int = -1
    anomaly_source_path: str | None = None  # None: procedural textures
    size: int = _PRESET["size"]
    scale: str | int = _RECIPE["scale"]  # "auto", "square", "native" or a longer side N
    scale_factor: float | None = None  # no flag: the zoom "auto" resolves to, from the training images' sizes
    auto_sides: tuple = (1.5, 1.25, 4.0)  # no flag: "auto" zooms every image alike so that the median one has about
    # (1.5 size)^2 pixels but keeps 1.25 size across, at most (4 size)^2 (utils/images/reading.py auto_zoom)
    grayscale: str = "auto"  # no flag: grey anomalies when the images are grey ("auto"); "on"/"off" for the API
    val_fraction: float = 0.1
    target_false_reject: float = 0.02  # docs/thresholds.md: why 2%
    workers: int = 0  # no flag: workers for the one-time decoding (docs/speed.md: they would only add copies)
    max_pixels: int = 89_478_485  # no flag in training: larger images are skipped from their header (detect has one)
    # model
    preset: str = DEFAULT_PRESET  # the resolved preset (never "auto")
    rec_base_width: int = _PRESET["rec_base_width"]
    seg_base_width: int = _PRESET["seg_base_width"]
    rec_residual: bool = _RECIPE["rec_residual"]  # no flag (API: Config(rec_residual=True)): the reconstructive
    # network predicts the correction to its input (model/model_unet.py ReconstructiveSubNetwork); not a default:
    # it shows the part from the first step but cost DRAEM's own map on MPDD (docs/training.md)
    # optimisation
    lr: float = 0.0001  # Adam, as the paper; x0.2 at 80% and 90% of the steps
    bs: int = _PRESET["bs"]
    epochs: int = _PRESET["epochs"]
    max_minutes: float | None = None
    fill_budget: bool = False  # no flag: --max_minutes without --epochs, the minutes alone end the run
    amp: str = "auto"
    channels_last: bool = False  # no flag: a memory layout for GPU users of the API (Config(channels_last=True))
    seed: int = 0
    # recipe (no flags but --jitter and --prior: the recipe sets them together, as measured)
    recipe: str = DEFAULT_RECIPE
    jitter: tuple = _RECIPE["jitter"]
    score_top_fraction: float = _RECIPE["score_top_fraction"]
    scaled_kernel: bool = _RECIPE["scaled_kernel"]
    anomaly_prior: float | None = _RECIPE["anomaly_prior"]
    prior: str = _RECIPE["prior"]  # "features": ImageNet feature novelty fused with DRAEM's map; "none": DRAEM alone
    prior_side: int = 128  # no flag: the prior sees each whole working image resized to about prior_area pixels,
    prior_area: int = 36_864  # its shorter side at least prior_side, its aspect kept (192 x 192 for a square image,
    # as at --scale square; docs/prior.md: measured)
    map_guide: int = _RECIPE["map_guide"]  # no flag: radius (working px) of the guided sharpening of the output
    # map at a scale other than square (model/feature_prior.py guided_sharpen; 0: none, as pairs before it); the
    # scores stay those of the map before it
    # output
    checkpoint_path: str = "./checkpoints/"
    log_path: str = "./logs/"
    val_every: int = 0  # no flag: validate and checkpoint every N steps (0: every epoch); for tests and the API
    resume: bool = False
    stop_after_epoch: int | None = None
    gpu_id: int = 0
    preview: str | None = None  # train.py --preview FILE: a picture of simulated samples instead of training

    @classmethod
    def build(cls, preset=DEFAULT_PRESET, recipe=DEFAULT_RECIPE, **overrides):
        """The preset's sizes and the recipe's levers, then `overrides` (unknown names: TypeError)."""
        return cls(**{**PRESETS[preset], **RECIPES[recipe], "preset": preset, "recipe": recipe, **overrides})

    def to_dict(self):
        """Plain types only (tuples as lists), for checkpoints and config.json."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


FIELDS = tuple(f.name for f in dataclasses.fields(Config))
