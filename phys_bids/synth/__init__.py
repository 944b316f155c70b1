"""Synthetic qMRI subjects from head label maps and on-the-fly simulated scans."""

from .generator import Head, SynthConfig, SynthGenerator, load_head

__all__ = ["Head", "SynthConfig", "SynthGenerator", "load_head"]
