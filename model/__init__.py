from model.model_unet import DRAEM, DiscriminativeSubNetwork, ReconstructiveSubNetwork, weights_init
