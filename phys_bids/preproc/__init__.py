"""Preprocessing steps as plain functions (skull stripping, N4; registration to come)."""

from .n4 import N4Result, n4_correct
from .skullstrip import SkullStripResult, looks_skull_stripped, skull_strip

__all__ = ["N4Result", "SkullStripResult", "looks_skull_stripped", "n4_correct", "skull_strip"]
