"""MR physics engine: signal equations, simulation, parameter spaces, encodings.

Pure torch; imports nothing from the rest of phys_bids (physics is the bottom layer).
"""

from .encoding import PhysicsEncoder
from .noise import bias_field, noise_sigma, rician_noise, smooth_random_field
from .sequences import (
    flair,
    flash,
    fse,
    gre,
    inversion_recovery,
    mp2rage,
    mp2rage_uni,
    mprage,
    mprage_static,
    spgr,
)
from .simulate import SEQUENCES, simulate
from .spaces import SPACES, TRAINING_SPACES, ParameterSpace, in_training_space

__all__ = [
    "PhysicsEncoder", "bias_field", "noise_sigma", "rician_noise", "smooth_random_field",
    "flair", "flash", "fse", "gre", "inversion_recovery", "mp2rage", "mp2rage_uni", "mprage",
    "mprage_static", "spgr", "SEQUENCES", "simulate", "SPACES", "TRAINING_SPACES",
    "ParameterSpace", "in_training_space",
]
