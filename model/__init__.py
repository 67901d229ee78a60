from model.model_unet import DRAEM, DiscriminativeSubNetwork, ReconstructiveSubNetwork, weights_init
from model.scoring import Scorer, anomaly_map, image_score
