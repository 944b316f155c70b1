"""Model-based quantitative MRI fits (vectorised, voxelwise, masked)."""

from .fit import despot1, mp2rage_t1, mpm_fit, r2star_fit

__all__ = ["despot1", "mp2rage_t1", "mpm_fit", "r2star_fit"]
