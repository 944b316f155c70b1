"""Preprocessing steps as plain functions (skull stripping; N4 and registration to come)."""

from .skullstrip import SkullStripResult, looks_skull_stripped, skull_strip

__all__ = ["SkullStripResult", "looks_skull_stripped", "skull_strip"]
