from model.draem import DRAEM, DRAEMScorer
from model.model_unet import DiscriminativeSubNetwork, ReconstructiveSubNetwork, weights_init
from model.scoring import anomaly_map, image_score

__all__ = ["DRAEM", "DRAEMScorer", "DiscriminativeSubNetwork", "ReconstructiveSubNetwork", "weights_init",
           "anomaly_map", "image_score"]
