"""Shipped models: find, verify (sha256) and build them from their manifests.

Each model lives in ``phys_bids/data/models/<name>/`` with ``weights.pt`` and the
``manifest.json`` written by training. :func:`load_model` refuses weights whose hash
differs from the manifest's, so a corrupted or swapped file never segments a scan.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..io import sha256
from ..physics import PhysicsEncoder
from .unet import PhysicsUNet

__all__ = ["MODELS_DIR", "ModelCorruptError", "LoadedModel", "available_models", "load_model",
           "model_folder"]

MODELS_DIR = Path(__file__).resolve().parents[1] / "data" / "models"


class ModelCorruptError(RuntimeError):
    """Shipped weights do not match their manifest."""


@dataclass
class LoadedModel:
    name: str
    network: PhysicsUNet
    manifest: dict
    encoder: PhysicsEncoder | None
    #: conformal margins of the Monte-Carlo bounds (calibration.json), when fitted for
    #: these weights
    calibration: dict | None = None

    @property
    def physics(self) -> bool:
        return self.encoder is not None


def _root(root) -> Path:
    """``root``, else ``$PHYS_BIDS_MODELS`` (a folder of model folders), else the shipped."""
    if root is not None:
        return Path(root)
    env = os.environ.get("PHYS_BIDS_MODELS")
    return Path(env) if env else MODELS_DIR


def available_models(root: Path | None = None, kind: str | None = "segmentation") -> list[str]:
    """Model names under ``root`` whose manifest's ``kind`` is ``kind`` (None: all kinds).

    Manifests written before the qMRI models have no ``kind``: they are segmentation."""
    root = _root(root)
    names = []
    for p in sorted(root.glob("*/manifest.json")):
        if kind is None or json.loads(p.read_text()).get("kind", "segmentation") == kind:
            names.append(p.parent.name)
    return names


def model_folder(name_or_dir: str | Path, root: Path | None = None) -> Path:
    """The folder of a model given as a folder (holding ``manifest.json``) or a name
    under ``root`` / ``$PHYS_BIDS_MODELS`` / the shipped models."""
    folder = Path(name_or_dir)
    if not (folder / "manifest.json").exists():
        folder = _root(root) / str(name_or_dir)
    if not (folder / "manifest.json").exists():
        raise FileNotFoundError(f"no model {name_or_dir!r}; available: {available_models(root)}")
    return folder


def load_model(name_or_dir: str | Path, *, device="cpu", root: Path | None = None) -> LoadedModel:
    """Load a shipped model by name (or a model folder) after checking its hash."""
    folder = model_folder(name_or_dir, root)
    mpath = folder / "manifest.json"
    manifest = json.loads(mpath.read_text())
    wpath = folder / manifest.get("weights_file", "weights.pt")
    digest = sha256(wpath)
    if digest != manifest["weights_sha256"]:
        raise ModelCorruptError(f"{wpath}: sha256 {digest[:12]}... does not match the manifest "
                                f"({manifest['weights_sha256'][:12]}...); reinstall phys-bids")
    args = dict(manifest["architecture"]["args"])
    args["channels"] = tuple(args["channels"])
    net = PhysicsUNet(**args)
    net.load_state_dict(torch.load(wpath, map_location=device, weights_only=True))
    net.to(device).eval()
    enc_cfg = manifest.get("physics_encoder")
    encoder = PhysicsEncoder.from_dict(enc_cfg) if enc_cfg else None
    if encoder is not None:
        frozen = enc_cfg["standardisation"]
        now = encoder.to_dict()["standardisation"]
        for s in frozen:
            for (m0, s0), (m1, s1) in zip(frozen[s], now[s], strict=True):
                if abs(m0 - m1) > 1e-9 * max(1, abs(m0)) or abs(s0 - s1) > 1e-9 * max(1, s0):
                    raise ModelCorruptError(f"{name_or_dir}: the physics encoding changed since "
                                            "training; retrain or pin the encoder")
    cal = folder / "calibration.json"
    calibration = json.loads(cal.read_text()) if cal.is_file() else None
    if calibration is not None and calibration.get("weights_sha256") != manifest["weights_sha256"]:
        calibration = None  # fitted for other weights: not valid for these
    return LoadedModel(manifest["name"], net, manifest, encoder, calibration)
