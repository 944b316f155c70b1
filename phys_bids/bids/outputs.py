"""BIDS-Derivatives names: every output file name of phys-bids is made here.

>>> src = "sub-01_ses-pre_acq-mprage_run-1_T1w.nii.gz"
>>> derivative_name(src, suffix="dseg", space="MNI152NLin2009aSym")
'sub-01_ses-pre_acq-mprage_run-1_space-MNI152NLin2009aSym_dseg.nii.gz'
>>> derivative_name(src, suffix="probseg", label="GM")
'sub-01_ses-pre_acq-mprage_run-1_label-GM_probseg.nii.gz'
>>> derivative_name(src, suffix="R1map", desc="segphysics")
'sub-01_ses-pre_acq-mprage_run-1_desc-segphysics_R1map.nii.gz'
>>> derivative_name(src, suffix="volumes", extension=".tsv")
'sub-01_ses-pre_acq-mprage_run-1_volumes.tsv'
>>> derivative_path(src, suffix="dseg")
'sub-01/ses-pre/anat/sub-01_ses-pre_acq-mprage_run-1_dseg.nii.gz'
>>> xfm_path(src, to="MNI152NLin2009aSym")
'sub-01/ses-pre/anat/sub-01_ses-pre_acq-mprage_run-1_from-T1w_to-MNI152NLin2009aSym_mode-image_xfm.mat'
>>> figure_path(src, step="segmentation")
'sub-01/figures/sub-01_ses-pre_acq-mprage_run-1_desc-segmentation_T1w.png'
"""

from __future__ import annotations

from .sidecars import parse_entities

__all__ = ["ENTITY_ORDER", "derivative_name", "derivative_path", "xfm_path", "figure_path",
           "report_path", "model_desc"]

#: BIDS entity order (specification, appendix "Entity table").
ENTITY_ORDER = ("sub", "ses", "task", "acq", "ce", "rec", "dir", "run", "mod", "echo", "flip",
                "inv", "mt", "part", "space", "res", "den", "label", "desc")


def model_desc(model: str) -> str:
    """The ``desc-`` value naming a model's outputs (entity values are alphanumeric).

    >>> model_desc("qmri-physics")
    'qmriphysics'
    """
    return "".join(ch for ch in model if ch.isalnum())


def derivative_name(source: str, *, suffix: str, extension: str = ".nii.gz", **entities) -> str:
    """Name of a derivative of ``source``: its entities plus ``entities``, BIDS-ordered."""
    ents, _ = parse_entities(source)
    for k, v in entities.items():
        if v is None:
            continue
        if k not in ENTITY_ORDER:
            raise ValueError(f"unknown BIDS entity {k!r}")
        if not str(v).isalnum():
            raise ValueError(f"entity {k}-{v}: values must be alphanumeric")
        ents[k] = str(v)
    parts = [f"{k}-{ents[k]}" for k in ENTITY_ORDER if k in ents]
    return "_".join([*parts, suffix]) + extension


def derivative_path(source: str, *, suffix: str, extension: str = ".nii.gz", datatype="anat",
                    **entities) -> str:
    """Path relative to the derivatives root: ``sub-X[/ses-Y]/<datatype>/<name>``."""
    return "/".join([*_folder(source, datatype), derivative_name(source, suffix=suffix,
                                                                 extension=extension,
                                                                 **entities)])


def _folder(source: str, datatype: str | None) -> list[str]:
    ents, _ = parse_entities(source)
    return ([f"sub-{ents['sub']}"] + ([f"ses-{ents['ses']}"] if "ses" in ents else [])
            + ([datatype] if datatype else []))


def xfm_path(source: str, *, to: str, from_: str = "T1w", mode: str = "image",
             extension: str = ".mat") -> str:
    """An ITK transform (fMRIPrep's ``from-/to-/mode-`` convention; listed in .bidsignore)."""
    ents, _ = parse_entities(source)
    parts = [f"{k}-{ents[k]}" for k in ENTITY_ORDER if k in ents]
    name = "_".join([*parts, f"from-{from_}", f"to-{to}", f"mode-{mode}", "xfm"]) + extension
    return "/".join([*_folder(source, "anat"), name])


def figure_path(source: str, *, step: str, suffix: str = "T1w") -> str:
    """A report figure: ``sub-X/figures/<entities>_desc-<step>_<suffix>.png``."""
    ents, _ = parse_entities(source)
    name = derivative_name(source, suffix=suffix, extension=".png", desc=step)
    return f"sub-{ents['sub']}/figures/{name}"


def report_path(subject: str) -> str:
    """The per-subject HTML report at the root of the derivatives."""
    return f"sub-{subject}.html"
