"""A small synthetic multi-site BIDS dataset made by the project's own simulator.

Three procedural anatomies (:mod:`phys_bids.synth.phantom`) are "scanned" at three
sites, as travelling subjects (one session per site), with vendor-typical sidecars:

============  =====================  ==================================================
session       sequence               sidecar convention
============  =====================  ==================================================
``siteA``     MPRAGE, TI 0.9 s       Siemens: ``RepetitionTime`` = inversion TR (2.3 s)
``siteB``     MPRAGE, TI 1.1 s       Philips: ``RepetitionTime`` = read-out TR (8.1 ms),
                                     ``RepetitionTimePreparation`` = 2.5 s
``siteC``     SPGR, TR 20 ms, FA 25  GE: ``RepetitionTimeExcitation``
============  =====================  ==================================================

Images are whole heads (skull and scalp), 1 mm, with a smooth receive field and
Rician noise (SNR 30), simulated with the same static equations the networks are
told about, so the known truth is the label map: the same anatomy at every site.

    python -m phys_bids.demo OUTPUT_DIR [--subjects 3] [--size 112] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from .physics import bias_field, rician_noise
from .physics.simulate import SEQUENCES
from .synth.phantom import phantom_labels
from .synth.tissues import CLASSES, PRIORS, label_to_class

__all__ = ["SITES", "write_demo_dataset"]

SITES = {
    "siteA": {"sequence": "MPRAGE", "params": {"ti": 0.9},
              "sidecar": {"Manufacturer": "Siemens", "ManufacturersModelName": "Prisma",
                          "InstitutionName": "Site A", "MagneticFieldStrength": 3,
                          "ScanningSequence": "GR\\IR", "SequenceVariant": "SK\\SP\\MP",
                          "SequenceName": "*tfl3d1_16ns", "RepetitionTime": 2.3,
                          "InversionTime": 0.9, "EchoTime": 0.00298, "FlipAngle": 9}},
    "siteB": {"sequence": "MPRAGE", "params": {"ti": 1.1},
              "sidecar": {"Manufacturer": "Philips", "ManufacturersModelName": "Ingenia",
                          "InstitutionName": "Site B", "MagneticFieldStrength": 3,
                          "PulseSequenceType": "3D TFE", "ScanningSequence": "GR\\IR",
                          "RepetitionTime": 0.0081, "RepetitionTimePreparation": 2.5,
                          "InversionTime": 1.1, "EchoTime": 0.0037, "FlipAngle": 8}},
    "siteC": {"sequence": "SPGR", "params": {"tr": 0.020, "te": 0.005, "fa": 25.0},
              "sidecar": {"Manufacturer": "GE", "ManufacturersModelName": "Discovery MR750",
                          "InstitutionName": "Site C", "MagneticFieldStrength": 3,
                          "PulseSequenceType": "SPGR", "ScanningSequence": "GR",
                          "SequenceVariant": "SP", "RepetitionTimeExcitation": 0.020,
                          "EchoTime": 0.005, "FlipAngle": 25}},
}


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def _tissue_maps(classes: np.ndarray) -> dict[str, torch.Tensor]:
    out = {}
    for p in ("pd", "r1", "r2s", "r2", "mt"):
        lut = torch.tensor([PRIORS[c][p].mean for c in CLASSES], dtype=torch.float32)
        out[p] = lut[torch.from_numpy(classes.astype(np.int64))]
    out["r1"] = out["r1"].clamp_min(1e-3)
    return out


def write_demo_dataset(root, *, subjects: int = 3, size: int = 112, seed: int = 0) -> Path:
    """Write the demo dataset to ``root`` (which must not exist or be empty)."""
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty; choose a new folder for the demo dataset")
    root.mkdir(parents=True, exist_ok=True)
    _write_json(root / "dataset_description.json", {
        "Name": "phys-bids demo: travelling subjects at three sites", "BIDSVersion": "1.9.0",
        "DatasetType": "raw", "License": "CC0",
        "GeneratedBy": [{"Name": "phys-bids demo", "Description": "simulated from "
                         "procedural anatomies with phys_bids.physics"}]})
    (root / "README").write_text(__doc__ or "")
    rows = ["participant_id\tsex\tage"]
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = -(size - 1) / 2
    g = torch.Generator().manual_seed(seed)
    for s in range(1, subjects + 1):
        sub = f"sub-{s:02d}"
        rows.append(f"{sub}\tn/a\tn/a")
        classes = label_to_class(phantom_labels(size, seed=seed + s))
        maps = _tissue_maps(classes)
        for ses, site in SITES.items():
            model = SEQUENCES[site["sequence"]]
            signal = model.function(*[maps[m] for m in model.maps if m in maps],
                                    **{k: torch.tensor(v) for k, v in site["params"].items()})
            signal = signal.abs() * bias_field((size,) * 3, strength=0.15, generator=g)[0]
            ref = float(signal[torch.from_numpy(classes > 0)].mean())
            image = rician_noise(signal, ref / 30.0, generator=g)
            image = (image / float(image.max()) * 1000).numpy().astype(np.float32)
            anat = root / sub / f"ses-{ses}" / "anat"
            anat.mkdir(parents=True, exist_ok=True)
            stem = f"{sub}_ses-{ses}_T1w"
            img = nib.Nifti1Image(image, affine)
            img.header.set_xyzt_units("mm", "sec")
            nib.save(img, str(anat / f"{stem}.nii.gz"))
            _write_json(anat / f"{stem}.json", site["sidecar"])
    (root / "participants.tsv").write_text("\n".join(rows) + "\n")
    return root


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("output_dir")
    ap.add_argument("--subjects", type=int, default=3)
    ap.add_argument("--size", type=int, default=112, help="image edge in 1 mm voxels")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    root = write_demo_dataset(args.output_dir, subjects=args.subjects, size=args.size,
                              seed=args.seed)
    print(f"demo dataset written to {root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
