"""Write a grid of synthetic anomalies (rows: clean image, augmented image, mask), to look at a recipe.

    python -m utils.sample_grid --data_path FOLDER [--anomaly_source_path DTD_FOLDER] [--recipe paper] --out grid.png
"""
import argparse
import logging
from pathlib import Path
import torch

from utils.data_loader import list_images, read_image
from utils.cli import probability
from utils.synthesis.simulation import make_synthesizer
from utils.synthesis.textures import load_texture_bank

log = logging.getLogger(__name__)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Write a grid of DRAEM synthetic anomalies (clean / augmented / mask).")
    p.add_argument("--data_path", required=True, help="folder of normal images (searched recursively)")
    p.add_argument("--anomaly_source_path", default=None,
                   help="folder of texture images (e.g. DTD); default: procedural textures")
    p.add_argument("--size", type=int, default=256, help="image side in pixels")
    p.add_argument("--out", default="docs/synthetic_samples.png", help="output PNG")
    p.add_argument("--grayscale", action="store_true", help="grey anomalies (for grayscale datasets)")
    p.add_argument("--n", type=int, default=8, help="number of columns (samples)")
    p.add_argument("--recipe", choices=("ours", "paper"), default="ours", help="as train.py --recipe")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--anomaly_prob", type=probability, default=1.0,
                   help="probability that a shown sample gets an anomaly (training uses 0.5)")
    p.add_argument("--max_textures", type=int, default=256, help="at most this many texture images are loaded")
    return p.parse_args(argv)


def save_grid(batch, out):
    """Rows: clean image, augmented image, mask; one column per sample."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(batch["image"])
    rows = [("clean", batch["image"]), ("augmented", batch["augmented_image"]), ("mask", batch["anomaly_mask"])]
    fig, axes = plt.subplots(3, n, figsize=(1.6 * n, 1.6 * 3), squeeze=False)
    for r, (name, images) in enumerate(rows):
        for c in range(n):
            ax = axes[r, c]
            img = images[c].permute(1, 2, 0).cpu().numpy()
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    generator = torch.Generator().manual_seed(args.seed)
    files = list_images(args.data_path)
    if not files:
        raise FileNotFoundError(f"no images found in {args.data_path}")
    pick = torch.randperm(len(files), generator=generator)[: args.n].tolist()
    images = torch.stack([read_image(files[i], args.size) for i in pick])
    bank = None
    if args.anomaly_source_path:
        bank = load_texture_bank(args.anomaly_source_path, args.size, args.max_textures, generator)
    synth = make_synthesizer(args.recipe, bank, args.grayscale, anomaly_prob=args.anomaly_prob)
    save_grid(synth(images, generator), args.out)
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
