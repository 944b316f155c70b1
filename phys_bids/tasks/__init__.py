"""Pydra tasks: thin wrappers over the plain functions of phys_bids (STYLE: thin orchestration)."""

from pathlib import Path

__all__ = ["save_output"]


def save_output(img, name: str, label: str = "") -> Path:
    """Save a task's image into its folder; the label prefixes the name, because Pydra
    gathers the files of split runs into one folder, where equal names would collide."""
    import nibabel as nib

    out = Path.cwd() / (f"{label}_{name}" if label else name)
    nib.save(img, str(out))
    return out
