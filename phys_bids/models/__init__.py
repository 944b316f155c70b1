"""Networks, losses and training of the physics-aware segmentation model."""

from .losses import soft_dice_loss, stochastic_cross_entropy, stratification_loss
from .unet import PhysicsUNet, enable_mc_dropout

__all__ = ["PhysicsUNet", "enable_mc_dropout", "soft_dice_loss", "stochastic_cross_entropy",
           "stratification_loss"]
