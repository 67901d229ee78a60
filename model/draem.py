"""The whole detector as one module: image -> (reconstruction, segmentation logits)."""
import math

import torch
import torch.nn as nn

from model.model_unet import DiscriminativeSubNetwork, ReconstructiveSubNetwork, check_spatial_size, weights_init
from model.scoring import anomaly_map, image_score


class DRAEM(nn.Module):
    """Both sub-networks; one module so DDP, AMP and ONNX export see a single graph.

    Parameter names stay under `reconstructive.` and `discriminative.` so each half can be saved in the
    authors' checkpoint format on its own.
    """

    def __init__(self, rec_base_width=128, seg_base_width=64, in_channels=3):
        super().__init__()
        self.reconstructive = ReconstructiveSubNetwork(in_channels, in_channels, base_width=rec_base_width)
        self.discriminative = DiscriminativeSubNetwork(2 * in_channels, 2, base_channels=seg_base_width)

    def init_weights(self, anomaly_prior=None):
        """The authors' init; with `anomaly_prior` p the segmentation head also starts at p(anomaly) = p.

        The focal-loss prior of RetinaNet (Lin et al. 2017): almost every pixel is normal, so starting at 0.5
        spends the first hundreds of steps only pushing the background down; short CPU runs cannot afford that.
        Logits (0, -log(1/p - 1)) give softmax p for the anomaly channel everywhere.
        """
        self.apply(weights_init)
        if anomaly_prior is not None:
            with torch.no_grad():
                bias = torch.tensor([0.0, -math.log(1 / anomaly_prior - 1)])
                self.discriminative.decoder_segment.fin_out[0].bias.copy_(bias)
        return self

    def forward(self, image):
        check_spatial_size(image, 32)
        rec = self.reconstructive(image)  # (B, 3, H, W)
        # The original feeds cat(reconstruction, image), in that order.
        logits = self.discriminative(torch.cat((rec, image), dim=1))  # (B, 2, H, W)
        return rec, logits


class DRAEMScorer(nn.Module):
    """Inference graph for export: image (B,3,H,W) in [0,1] -> (anomaly map (B,H,W), score (B,))."""

    def __init__(self, draem, kernel=21):
        super().__init__()
        self.draem, self.kernel = draem, kernel

    def forward(self, image):
        _, logits = self.draem(image)
        amap = anomaly_map(logits)
        return amap, image_score(amap, self.kernel)
