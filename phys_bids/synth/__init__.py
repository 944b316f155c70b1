"""Synthetic qMRI subjects from head label maps and on-the-fly simulated scans."""

from .generator import Head, SynthConfig, SynthGenerator, load_head, normalise_image
from .tissues import CLASSES, PRIORS, TARGETS, label_to_class, priors_at

__all__ = ["Head", "SynthConfig", "SynthGenerator", "load_head", "normalise_image", "CLASSES",
           "PRIORS", "TARGETS", "label_to_class", "priors_at"]
