"""Tissue classes of the head label maps and literature priors of their qMRI values.

Labels follow FreeSurfer's aseg convention (SynthSeg training label maps); the
extra-cerebral labels 5xx are mapped as documented in ``shared/data/README.md``.

Priors (3 T, ``mean``, between-subject ``sd``, within-subject log-sd of smooth
spatial variation). Sources:

* R1, brain: the values used by the papers' physics gold standard (Borges et al.,
  sec. 3.1, from MPM data: GM 0.683, WM 1.036, CSF 0.240 1/s); deep grey matter
  between cortex and WM (higher myelin and iron), after Weiskopf et al., Front.
  Neurosci. 2013 and Draganski et al., NeuroImage 2011.
* PD (fraction of water, 1 = pure water), R2*, MTsat (p.u.): Weiskopf et al. 2013
  (WM PD 69 p.u., GM 80 p.u., R2* WM 21.5 / GM 15.7 1/s, MTsat WM 1.54 / GM 0.85 p.u.);
  pallidum/putamen R2* from Draganski et al. 2011; CSF R2* a few 1/s.
* R2 (for spin-echo sequences): T2 at 3 T of ~ 99 ms (GM), 75 ms (WM), ~2 s (CSF),
  Wansapura et al., JMRI 1999; Stanisz et al., MRM 2005.
* Non-brain: fat T1 ~ 0.37 s, muscle T1 ~ 1.4 s at 3 T (Stanisz 2005; Bojorquez et
  al., MRI 2017); cortical bone very low PD and short T2*; vitreous close to water.

Field strength: T1 of brain tissue lengthens roughly as ``B0**0.36`` (Rooney et al.,
MRM 2007) and R2* grows about linearly with B0 (Peters et al., MRI 2007); :func:`priors_at`
scales the 3 T priors accordingly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "CLASSES", "TARGETS", "PRIORS", "Prior", "label_to_class", "priors_at", "TARGET_OF_CLASS",
    "reference_tissues", "wm_gm_contrast", "nearest_training_acquisition",
]

#: Fine tissue classes used by the generator (index = class id).
CLASSES = (
    "background",  # air
    "gm_cortex", "gm_deep", "wm", "csf",
    "skull", "scalp_fat", "soft_tissue", "eyes", "spinal_cord",
)

#: Segmentation targets (index = label in dseg outputs).
TARGETS = ("background", "GM", "WM", "CSF")

#: Fine class -> target (non-brain tissue is background of the skull-stripped image).
TARGET_OF_CLASS = np.array([0, 1, 1, 2, 3, 0, 0, 0, 0, 0], dtype=np.int64)

_GM_CORTEX = (3, 42, 8, 47, 17, 53, 18, 54)  # cerebral + cerebellar cortex, hippocampus, amygdala
_GM_DEEP = (10, 49, 11, 50, 12, 51, 13, 52, 26, 58)  # thalamus, caudate, putamen, pallidum, acc.
_WM = (2, 41, 7, 46, 16, 28, 60, 85)  # cerebral/cerebellar WM, brain-stem, ventral DC, chiasm
_CSF = (4, 43, 5, 44, 14, 15, 24, 72, 30, 62)  # ventricles, extra-ventricular CSF, vessels(small)


def label_to_class(labels: np.ndarray) -> np.ndarray:
    """Map an integer label volume to :data:`CLASSES` ids (uint8).

    Unknown labels below 500 (small structures: 25, 57, 136, 137, 163, 164 ...) go to
    soft tissue if non-brain is ambiguous; they are a handful of voxels.
    """
    lab = np.rint(labels).astype(np.int32)
    out = np.full(lab.shape, CLASSES.index("soft_tissue"), dtype=np.uint8)
    out[lab == 0] = 0
    for ids, name in ((_GM_CORTEX, "gm_cortex"), (_GM_DEEP, "gm_deep"), (_WM, "wm"),
                      (_CSF, "csf"), ((515,), "skull"), ((511, 516), "scalp_fat"),
                      ((506,), "eyes"), ((512,), "spinal_cord")):
        out[np.isin(lab, ids)] = CLASSES.index(name)
    return out


@dataclass(frozen=True)
class Prior:
    """Gaussian prior of one parameter of one class: value ~ N(mean, sd) per subject,
    times a smooth spatial factor exp(spatial * g(x)), g ~ N(0, 1) at control points."""

    mean: float
    sd: float
    spatial: float = 0.05


#: Priors at 3 T per class: pd (fraction), r1 (1/s), r2s (1/s), r2 (1/s), mt (p.u.).
PRIORS: dict[str, dict[str, Prior]] = {
    "background": {"pd": Prior(0.0, 0.0, 0.0), "r1": Prior(0.3, 0.0, 0.0),
                   "r2s": Prior(10.0, 0.0, 0.0), "r2": Prior(10.0, 0.0, 0.0),
                   "mt": Prior(0.0, 0.0, 0.0)},
    "gm_cortex": {"pd": Prior(0.80, 0.02), "r1": Prior(0.683, 0.030), "r2s": Prior(15.7, 1.0),
                  "r2": Prior(10.1, 0.5), "mt": Prior(0.85, 0.05)},
    "gm_deep": {"pd": Prior(0.76, 0.02, 0.08), "r1": Prior(0.80, 0.04, 0.08),
                "r2s": Prior(22.0, 2.0, 0.15), "r2": Prior(12.5, 0.8), "mt": Prior(1.05, 0.08)},
    "wm": {"pd": Prior(0.69, 0.02), "r1": Prior(1.036, 0.040), "r2s": Prior(21.5, 1.2),
           "r2": Prior(13.3, 0.7), "mt": Prior(1.54, 0.08)},
    "csf": {"pd": Prior(1.00, 0.02, 0.02), "r1": Prior(0.240, 0.015, 0.03),
            "r2s": Prior(3.0, 0.5, 0.1), "r2": Prior(0.5, 0.05), "mt": Prior(0.10, 0.02)},
    "skull": {"pd": Prior(0.15, 0.05, 0.2), "r1": Prior(1.8, 0.3, 0.1),
              "r2s": Prior(80.0, 15.0, 0.2), "r2": Prior(50.0, 8.0, 0.2), "mt": Prior(2.0, 0.3)},
    "scalp_fat": {"pd": Prior(0.90, 0.05, 0.1), "r1": Prior(2.7, 0.2, 0.1),
                  "r2s": Prior(30.0, 5.0, 0.15), "r2": Prior(14.0, 2.0, 0.1),
                  "mt": Prior(0.4, 0.1)},
    "soft_tissue": {"pd": Prior(0.75, 0.05, 0.1), "r1": Prior(0.72, 0.06, 0.1),
                    "r2s": Prior(30.0, 5.0, 0.15), "r2": Prior(20.0, 3.0, 0.1),
                    "mt": Prior(2.5, 0.3)},
    "eyes": {"pd": Prior(0.95, 0.03, 0.02), "r1": Prior(0.25, 0.02, 0.03),
             "r2s": Prior(3.0, 0.5, 0.1), "r2": Prior(1.0, 0.1), "mt": Prior(0.1, 0.02)},
    "spinal_cord": {"pd": Prior(0.70, 0.03), "r1": Prior(0.95, 0.05), "r2s": Prior(22.0, 2.0),
                    "r2": Prior(13.0, 1.0), "mt": Prior(1.4, 0.1)},
}

_BRAIN = ("gm_cortex", "gm_deep", "wm", "csf", "spinal_cord")


def priors_at(field_strength: float = 3.0) -> dict[str, dict[str, Prior]]:
    """Priors scaled from 3 T to ``field_strength`` (T): R1 of brain tissue by
    ``(B0/3)**-0.36`` (CSF and fat left unchanged), R2* linearly with B0."""
    if field_strength <= 0:
        raise ValueError(f"field strength must be positive, got {field_strength} T")
    k1 = (field_strength / 3.0) ** -0.36
    k2 = field_strength / 3.0
    out = {}
    for cls, pri in PRIORS.items():
        p = dict(pri)
        if cls in _BRAIN and cls != "csf":
            r1 = p["r1"]
            p["r1"] = Prior(r1.mean * k1, r1.sd * k1, r1.spatial)
        r2s = p["r2s"]
        p["r2s"] = Prior(r2s.mean * k2, r2s.sd * k2, r2s.spatial)
        out[cls] = p
    return out


def reference_tissues(field_strength: float = 3.0) -> dict[str, dict[str, float]]:
    """Prior means of cortical GM, WM and CSF at ``field_strength``: the reference
    tissues of the contrast physics encoding (:class:`phys_bids.physics.PhysicsEncoder`)."""
    pri = priors_at(field_strength)
    return {t: {k: pri[c][k].mean for k in ("pd", "r1", "r2s", "r2", "mt")}
            for t, c in (("gm", "gm_cortex"), ("wm", "wm"), ("csf", "csf"))}


def wm_gm_contrast(sequence: str, params: dict, field_strength: float = 3.0) -> np.ndarray:
    """(WM - GM) / GM of the magnitude image an acquisition makes of the prior tissue
    means at ``field_strength`` (T): a property of the protocol, computed from its
    parameters alone (no image, no network). ``params`` as the segmentation model takes
    them, in SI units (s, degrees), each a number or a list of equal length; returns one
    value per parameter set.

    For SPGR it falls with the flip angle (proton-density weighting: GM, with more
    water, catches up with WM and overtakes it below about 20 deg); the networks' SPGR
    volumes move with it (docs/segmentation.md, "SPGR contrast check").

    >>> round(float(wm_gm_contrast("SPGR", {"tr": 0.02, "te": 0.005, "fa": 25.0})[0]), 2)
    0.2
    """
    from . import PhysicsEncoder

    enc = PhysicsEncoder((sequence,), mode="contrast",
                         tissues=reference_tissues(field_strength))
    gm, wm, _ = enc.levels(sequence, params).T
    return ((wm - gm) / gm).numpy()


def nearest_training_acquisition(sequence: str, params: dict, field_strength: float = 3.0,
                                 n: int = 24) -> dict:
    """The acquisition of ``sequence``'s training space whose image of the prior tissue
    means is most alike: the smallest distance between the reference GM, WM and CSF
    levels over their brain-weighted mean (the contrast encoding's ``levels``), over a
    midpoint grid of ``n`` values per varied parameter. A parameter set inside the
    training space is returned unchanged.

    What a physics branch can be told instead of an acquisition it would have to
    extrapolate to: one it trained on that makes the same contrast, where clipping each
    parameter to its range (``ParameterSpace.clamp``) keeps the nearest *parameters*.
    ``params``: SI units, each a number or a list of equal length; returns lists.

    >>> told = nearest_training_acquisition("MPRAGE", {"ti": [0.9, 2.0]})
    >>> told["ti"][0], 1.1 < told["ti"][1] <= 1.2
    (0.9, True)
    """
    import torch

    from . import SPACES, TRAINING_SPACES, PhysicsEncoder

    space = SPACES[TRAINING_SPACES[sequence]]
    enc = PhysicsEncoder((sequence,), mode="contrast", tissues=reference_tissues(field_strength))
    given = {k: np.atleast_1d(np.asarray(v, dtype=np.float64)) for k, v in params.items()}
    size = max(len(v) for v in given.values())
    given = {k: np.broadcast_to(v, (size,)).copy() for k, v in given.items()}
    grid = space.midpoint_grid(n)
    nearest = torch.cdist(enc.levels(sequence, given), enc.levels(sequence, grid)).argmin(1)
    out = {k: v.tolist() for k, v in given.items()}
    for i in range(size):
        if not space.contains({k: v[i] for k, v in given.items()}):
            for k in grid:
                out[k][i] = float(grid[k][nearest[i]])
    return out
