"""What each run is told: the image checks, sidecar -> acquisition, and every decision
about it (training space, physics clamp, contrast harmonisation, low-contrast flag),
made once, before any task runs (:func:`prepare_run`).

The tasks receive the decisions as arguments (:class:`PreparedRun`'s fields) and never
re-derive them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..bids.checks import InputImageError, check_anatomical
from ..bids.layout import T1wRun
from ..bids.protocol import Protocol
from ..bids.sidecars import SidecarError, load_sidecar
from ..errors import SubjectError
from ..physics.sidecar import ParameterError, acquisition_from_sidecar
from ..physics.spaces import in_training_space
from ..physics.tissues import nearest_training_acquisition, wm_gm_contrast

__all__ = ["LOW_CONTRAST_SPGR", "PreparedRun", "prepare_run"]


#: SPGR protocols whose predicted WM-GM contrast (:func:`phys_bids.physics.tissues.wm_gm_contrast`)
#: is below this are flagged: in the consistency benchmark (three test subjects, 121 draws
#: each) the shipped physics model's volumes stay within 2.2 % of their median from +0.15 up
#: and within 5.3 % from +0.10, and move by up to 12 % below it, 26 % below +0.05 and 53 %
#: where WM and GM are inverted (docs/segmentation.md, "SPGR contrast check"). MPRAGE
#: images in the models' TI range are far above it (+0.36 at TI 1.2 s).
LOW_CONTRAST_SPGR = 0.10


@dataclass
class PreparedRun:
    """A run whose image and acquisition passed the checks."""

    run: T1wRun
    sequence: str
    params: dict
    sources: dict
    in_training_space: bool
    outside: list[str]
    warnings: list[str] = field(default_factory=list)
    #: predicted WM-GM contrast of the protocol, and the field strength (T) of its tissue
    #: priors (the sidecar's MagneticFieldStrength, else 3 T); None when not computed
    wm_gm_contrast: float | None = None
    contrast_field_strength: float = 3.0
    #: what the physics branch is told instead of ``params`` (``--physics-clamp``); None:
    #: ``params`` themselves. The qMRI estimate and every record keep ``params``.
    told_params: dict | None = None
    #: the acquisition the image is re-rendered from at the reference protocol before
    #: segmentation (``--harmonise-contrast``; :func:`phys_bids.preproc.harmonise.harmonise`):
    #: ``{"sequence", "params", "field_strength"}``, empty when it is segmented as acquired
    harmonise_from: dict = field(default_factory=dict)
    #: why ``--harmonise-contrast`` left the image as acquired ("" when it did not)
    harmonise_refused: str = ""

    @property
    def segmentation_params(self) -> dict:
        if self.harmonise_from:
            from ..preproc.harmonise import REFERENCE

            return dict(REFERENCE[1])
        return self.params if self.told_params is None else self.told_params

    @property
    def segmentation_sequence(self) -> str:
        """The sequence the physics branch is told (the reference's when re-rendered)."""
        if self.harmonise_from:
            from ..preproc.harmonise import REFERENCE

            return REFERENCE[0]
        return self.sequence

    def told_text(self, params: dict | None = None) -> str:
        """The parameters outside the training space as the branch was told them (or as
        ``params`` gives them), e.g. ``"ti 1.188"``."""
        given = self.segmentation_params if params is None else params
        return ", ".join(f"{k} {given[k]:.4g}" for k in self.outside)

    @property
    def low_contrast(self) -> bool:
        return (self.sequence == "SPGR" and self.wm_gm_contrast is not None
                and self.wm_gm_contrast < LOW_CONTRAST_SPGR)

    def low_contrast_note(self) -> str:
        return (f"SPGR WM-GM contrast {self.wm_gm_contrast:+.2f} (tissue priors at "
                f"{self.contrast_field_strength:g} T) is below {LOW_CONTRAST_SPGR:+.2f}: the "
                "networks' GM and WM volumes move with the contrast there (GM read high, WM "
                "low); compare them across protocols with caution")


def prepare_run(run: T1wRun, bids_root: Path, protocol: Protocol | None, *,
                physics: bool, physics_clamp: str = "none",
                harmonise_contrast: bool = False, segmenter: str = "network") -> PreparedRun:
    """Check the image and read its acquisition (raises :class:`SubjectError`).

    ``physics_clamp="contrast"``: a physics model is told, for an acquisition outside its
    training space, the training acquisition of nearest reference-tissue contrast at the
    sidecar's field strength instead of one it would extrapolate to.
    ``harmonise_contrast``: the image is re-rendered at the reference protocol before
    segmentation where its tissue curve can be inverted (else segmented as acquired, with
    a warning); the clamp then does not apply."""
    try:
        check_anatomical(run.path)
    except InputImageError as err:
        raise SubjectError(str(err)) from None
    try:
        sidecar = load_sidecar(run.path, bids_root)
    except SidecarError as err:
        raise SubjectError(str(err)) from None
    overrides = protocol.fields_for(run.name) if protocol else {}
    try:
        acq = acquisition_from_sidecar(sidecar, suffix="T1w", overrides=overrides)
        params = acq.model_params()
    except ParameterError as err:
        if physics:
            raise SubjectError(f"{run.name}: {err}") from None
        return PreparedRun(run, "unknown", {}, {}, False, ["sequence"],
                           [f"acquisition not read ({err}); the baseline model does not "
                            "need it"],
                           harmonise_refused="the acquisition was not read" if harmonise_contrast
                           else "")
    inside, outside = in_training_space(acq.sequence, params)
    if segmenter == "bayes":  # no training space: the signal equation is told the scan
        inside, outside = True, []
    warnings = list(acq.warnings)
    if not inside:
        warnings.append(f"acquisition parameter(s) {', '.join(outside)} outside the model's "
                        "training space: volumes are less reliable (flagged in the outputs)")
    sources = {k: acq.sources.get(k, "") for k in params}
    field_t = float(acq.params.get("field_strength", 3.0))
    contrast = None
    if acq.sequence in ("MPRAGE", "SPGR"):
        contrast = float(wm_gm_contrast(acq.sequence, params, field_t)[0])
    told = None
    harmonise_from: dict = {}
    refused = ""
    if harmonise_contrast:
        from ..preproc.harmonise import HarmonisationError, Harmoniser

        spec = {"sequence": acq.sequence, "params": dict(params), "field_strength": field_t}
        try:
            Harmoniser.from_spec(spec)  # the tasks build the same transform from it
            harmonise_from = spec
        except (HarmonisationError, KeyError, ValueError) as err:
            refused = str(err)
    if (physics and not inside and physics_clamp == "contrast" and outside != ["sequence"]
            and not harmonise_from):
        near = nearest_training_acquisition(acq.sequence, params, field_t)
        told = {k: float(v[0]) for k, v in near.items()}
    prepared = PreparedRun(run, acq.sequence, params, sources, inside, outside, warnings,
                           contrast, field_t, told, harmonise_from, refused)
    if told is not None:
        warnings.append(f"physics branch told {prepared.told_text()} (the training "
                        "acquisition of nearest tissue contrast, --physics-clamp contrast) "
                        f"instead of {prepared.told_text(params)}")
    if prepared.low_contrast:
        warnings.append(prepared.low_contrast_note() + " (flagged in the outputs)")
    return prepared
