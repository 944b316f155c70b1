"""Every participant-level output: derivatives, sidecars with provenance, the volumes
table (``*_morph.tsv``) and the report.

The ``*_morph.tsv`` columns (:data:`MORPH_TISSUES`, :data:`MC_COLUMNS`,
:data:`CAL_COLUMNS`) and the provenance keys (:data:`PROVENANCE`) are defined here
once; the group level reads the outputs through them.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .. import __version__
from ..bids.derivatives import DerivativesWriter
from ..bids.outputs import derivative_path, model_desc, xfm_path
from ..config import Settings
from ..models.calibration import margins_for, widen
from ..tasks.segment import TISSUES
from .acquisition import LOW_CONTRAST_SPGR, PreparedRun

__all__ = ["write_outputs", "MORPH_TISSUES", "MC_COLUMNS", "CAL_COLUMNS", "POST_COLUMNS",
           "PROVENANCE"]

log = logging.getLogger("phys_bids.participant")

#: rows of ``*_morph.tsv``
MORPH_TISSUES = ("GM", "WM", "CSF", "ICV")
#: the key under which every sidecar carries the provenance block
PROVENANCE = "PhysBIDS"


def _provenance(p: PreparedRun, settings: Settings, template, model, digest: str,
                fit: dict | None = None) -> dict:
    bayes = settings.segmenter == "bayes"
    return {
        "Version": __version__,
        "Seed": settings.seed,
        "Threads": settings.omp_nthreads,
        **({"Segmentation": {
            "Method": "physics-tied Bayesian segmentation (phys_bids.models.bayes): class "
                      "means from the signal equation at the acquisition, partial-volume "
                      "classes, the template's tissue maps and a Markov random field",
            "Fit": fit}} if bayes else {}),
        "Model": None if bayes else {
            "Name": model.name, "WeightsSha256": model.manifest["weights_sha256"],
            "TrainingSteps": model.manifest.get("steps"), "PhysicsAware": model.physics},
        "Template": {"Name": template.name, "Source": template.source},
        "SkullStripMethod": settings.skull_strip,
        "MonteCarloSamples": settings.mc_samples,
        "Acquisition": {"Sequence": p.sequence, "Parameters": p.params,
                        "ParameterSources": p.sources},
        "InTrainingSpace": p.in_training_space,
        "OutsideTrainingSpace": p.outside,
        "PhysicsClamp": settings.physics_clamp,
        "PhysicsToldParameters": p.segmentation_params if model.physics and not bayes
        else None,
        **({"ContrastHarmonisation": {
            "Applied": bool(p.harmonise_from),
            "Reference": {"Sequence": p.segmentation_sequence if p.harmonise_from else None,
                          "Parameters": p.segmentation_params if p.harmonise_from else None},
            "Description": "image re-rendered at the reference protocol by the signal "
                           "equation along the prior tissue curve before the skull strip's "
                           "mask and before segmentation (--harmonise-contrast; "
                           "docs/segmentation.md)"}}
           if settings.harmonise_contrast else {}),
        "PredictedContrast": None if p.wm_gm_contrast is None else {
            "WMGM": round(p.wm_gm_contrast, 4), "FieldStrength": p.contrast_field_strength,
            "Low": p.low_contrast,
            "Description": "(WM - GM) / GM of the image this protocol makes of the prior "
                           f"tissue means; SPGR below {LOW_CONTRAST_SPGR:+.2f} is flagged"},
        "ConfigurationDigest": digest,
    }


#: Monte-Carlo columns of ``*_morph.tsv``.
MC_COLUMNS = ("mc_mean_ml", "mc_median_ml", "mc_q1_ml", "mc_q3_ml", "mc_iqr_ml", "mc_p2_5_ml",
              "mc_p97_5_ml")
#: calibrated bounds (the sample quantiles widened by the model's conformal margins)
CAL_COLUMNS = ("cal_q1_ml", "cal_q3_ml", "cal_p2_5_ml", "cal_p97_5_ml")
#: posterior bounds of the physics-tied Bayesian segmentation (n/a for the networks)
POST_COLUMNS = ("post_sd_ml", "post_p2_5_ml", "post_p97_5_ml")
#: GM-WM contrast-to-noise of the fitted Bayesian model below which the QC flags a scan
LOW_CNR = 1.5
MC_DESCRIPTIONS = {
    "mc_mean_ml": "mean volume over the Monte-Carlo samples (model grid, 1 mm voxels)",
    "mc_median_ml": "median over the samples", "mc_q1_ml": "first quartile (25th percentile)",
    "mc_q3_ml": "third quartile (75th percentile)", "mc_iqr_ml": "q3 - q1",
    "mc_p2_5_ml": "2.5th percentile", "mc_p97_5_ml": "97.5th percentile",
    "cal_q1_ml": "calibrated lower bound of the 50 % interval: mc_q1 widened by the model's "
                 "conformal margin for acquisitions inside or outside its training space "
                 "(models/<name>/calibration.json; docs/uncertainty.md)",
    "cal_q3_ml": "calibrated upper bound of the 50 % interval",
    "cal_p2_5_ml": "calibrated lower bound of the 95 % interval",
    "cal_p97_5_ml": "calibrated upper bound of the 95 % interval",
    "post_sd_ml": "posterior SD of the volume (physics-tied Bayesian segmentation: voxel-wise "
                  "labelling and the class signals' uncertainty; model grid); n/a for the "
                  "networks and for ICV",
    "post_p2_5_ml": "volume_ml - 1.96 post_sd_ml (not calibrated)",
    "post_p97_5_ml": "volume_ml + 1.96 post_sd_ml (not calibrated)",
}


def _mc_stats(samples: list) -> dict | None:
    """Per-tissue summaries of Monte-Carlo volumes ([[GM, WM, CSF], ...]); ICV = sum."""
    from ..models.segment import volume_summary

    if not samples:
        return None
    v = np.asarray(samples, dtype=np.float64)
    cols = {"GM": v[:, 0], "WM": v[:, 1], "CSF": v[:, 2], "ICV": v.sum(1)}
    return {t: volume_summary(x) for t, x in cols.items()}


def _channel_images(path, channels=TISSUES):
    """(name, 3D image) for each ``{index: name}`` channel of a 4D map (default: the tissue
    channels of a background+tissues map)."""
    import nibabel as nib

    img = nib.load(str(path))
    data = img.get_fdata(dtype=np.float32)
    for k, name in channels.items():
        hdr = img.header.copy()
        hdr.set_data_shape(data.shape[:3])
        yield name, nib.Nifti1Image(data[..., k], img.affine, hdr)


def _write_qmri(put, out: dict, estimated: dict, qmri, reference: dict, p: PreparedRun
                ) -> None:
    """The estimated maps (``estimated``: map name -> native image; one file per map,
    ``desc-<model>``) and the harmonised image."""
    from ..models.qmri_net import BIDS_SUFFIX, UNITS

    desc = model_desc(qmri.name)
    model = {"Name": qmri.name, "WeightsSha256": qmri.manifest["weights_sha256"],
             "TrainingSteps": qmri.manifest.get("steps")}
    for name, img in estimated.items():
        note = ("Estimated by a network from this one T1-weighted image and its acquisition "
                f"parameters ({p.sequence}); a model estimate, not a model-based fit of "
                "dedicated qMRI acquisitions.")
        if name == "MT":
            note += (" MPRAGE and SPGR without an MT pulse carry no MT contrast: this map "
                     "comes from anatomy and the training priors, not from a measurement.")
        if name == "PD":
            note += " A magnitude image fixes PD only up to scale: the scale is the priors'."
        put({"suffix": BIDS_SUFFIX[name], "desc": desc}, img=img,
            extra={"Units": UNITS[name], "SkullStripped": True, "ModelEstimate": True,
                   "EstimationMethod": "phys-bids qMRI network (physics branch told the "
                   "acquisition); sliding window on the template grid, resampled to native",
                   "EstimationModel": model, "Description": note})
    put({"suffix": "T1w", "desc": "harmonized"}, out["harmonized"],
        extra={"SkullStripped": True,
               "Description": f"this scan re-synthesised at the reference protocol "
               f"'{reference['name']}' from its estimated qMRI maps (signal equation of "
               f"{reference['sequence']}); brain only, mean 1000 inside the brain",
               "ReferenceProtocol": {"Name": reference["name"],
                                     "Sequence": reference["sequence"],
                                     "Parameters": reference["params"],
                                     "Fields": reference["fields"]},
               "EstimationModel": model})


def _write_fits(writer, p: PreparedRun, out: dict, done: dict, estimated: dict
                ) -> list[dict]:
    """Model-based fits of the qMRI acquisitions in this run's session
    (:mod:`phys_bids.qmri.dataset`), written once per session, each compared with this
    run's network estimate of the same map (``estimated``: map name -> native image;
    empty without the qMRI model). A set that cannot be fitted is reported and
    skipped."""
    import nibabel as nib

    from ..models.qmri_net import BIDS_SUFFIX
    from ..qmri.dataset import UNITS, FitError, compare_maps, find_sets, fit_set

    key = (p.run.subject, p.run.session)
    if key not in done:
        results = []
        for s in find_sets(writer.bids_dir, p.run.subject, p.run.session):
            entry = {"kind": s.kind, "name": s.name, "method": s.method}
            try:
                maps, affine, prov = fit_set(s)
            except FitError as err:
                log.warning("sub-%s: qMRI fit skipped: %s", p.run.subject, err)
                entry["error"] = str(err)
                results.append(entry)
                continue
            src = f"{s.name}_{s.kind}.nii.gz"
            sources = [f"bids:raw:{Path(p.run.relpath).parent.as_posix()}/{f.name}"
                       for f in s.images]
            entry["maps"] = {}
            for name, data in maps.items():
                rel = derivative_path(src, suffix=name, desc=s.method)
                writer.save_image(rel, nib.Nifti1Image(data, affine))
                writer.write_json(rel.replace(".nii.gz", ".json"), {
                    "Sources": sources, "Units": UNITS[name], "SkullStripped": False,
                    "ModelEstimate": False,
                    "EstimationMethod": f"phys-bids model-based fit ({s.method}) of the "
                    f"session's {s.kind} images", "EstimationParameters": prov})
                entry["maps"][name] = {"path": rel, "data": data, "affine": affine}
            log.info("sub-%s: fitted %s from %d %s image(s): %s", p.run.subject,
                     "/".join(entry["maps"]), len(s.images), s.kind, s.name)
            results.append(entry)
        done[key] = results
    fits = []
    estimates = {BIDS_SUFFIX[n]: img for n, img in estimated.items()}
    dseg = (nib.load(str(out["dseg"]))
            if estimates and any("maps" in e for e in done[key]) else None)
    for entry in done[key]:
        row = {k: entry[k] for k in ("kind", "name", "method")}
        if "error" in entry:
            row["error"] = entry["error"]
        else:
            row["maps"] = {}
            for name, m in entry["maps"].items():
                cmp = (compare_maps(m["data"], m["affine"], estimates[name], dseg)
                       if name in estimates else None)
                row["maps"][name] = {"path": m["path"], "comparison": cmp}
        fits.append(row)
    return fits


def _registration_dice(mask_template, template) -> float:
    import nibabel as nib

    a = np.asanyarray(nib.load(str(mask_template)).dataobj) > 0
    b = np.asanyarray(nib.load(str(template.mask)).dataobj) > 0
    return float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))


def write_outputs(subject: str, prepared: list[PreparedRun], per_run: list[dict], *,
                  settings: Settings, writer: DerivativesWriter, template, model, digest: str,
                  qmri=None) -> list[dict]:
    """Write every derivative, the figures and the report of one subject."""

    from ..models.qmri_net import MAPS
    from . import report

    writer.init_dataset()
    summaries = []
    fitted_sessions: dict = {}
    tpl = template.name
    for p, out in zip(prepared, per_run, strict=True):
        src = p.run.name
        prov = _provenance(p, settings, template, model, digest, out.get("seg_fit"))
        sources = [f"bids:raw:{p.run.relpath}"]

        def put(rel_kwargs, path=None, img=None, extra=None, _src=src, _sources=sources,
                _prov=prov):
            rel = derivative_path(_src, **rel_kwargs)
            if img is not None:
                writer.save_image(rel, img)
            else:
                writer.copy_file(rel, path)
            side = {"Sources": _sources, **(extra or {}), PROVENANCE: _prov}
            writer.write_json(rel.replace(".nii.gz", ".json"), side)
            return rel

        put({"suffix": "mask", "desc": "brain"}, out["mask"], extra={"Type": "Brain"})
        put({"suffix": "T1w", "desc": "preproc"}, out["n4"], extra={"SkullStripped": True})
        put({"suffix": "T1w", "desc": "preproc", "space": tpl}, out["in_template"],
            extra={"SkullStripped": True})
        xfm = xfm_path(src, to=tpl)
        writer.copy_file(xfm, out["transform"])
        for name, img in _channel_images(out["probseg"]):
            put({"suffix": "probseg", "label": name}, img=img)
        if settings.mc_samples > 0:
            for name, img in _channel_images(out["sd"]):
                put({"suffix": "probseg", "label": name, "desc": "sd"}, img=img,
                    extra={"Description": f"standard deviation of the {name} probability over "
                           f"{settings.mc_samples} Monte-Carlo samples (dropout + aleatoric "
                           "logit noise); not a probability"})
        put({"suffix": "dseg"}, out["dseg"])
        put({"suffix": "dseg", "space": tpl}, out["dseg_template"])
        # the 4D map file is read once, for the outputs and the comparison with fits
        estimated = (dict(_channel_images(out["qmri_maps"], dict(enumerate(MAPS))))
                     if qmri is not None and out.get("qmri_maps") else {})
        if estimated:
            _write_qmri(put, out, estimated, qmri, settings.reference, p)
        fits = _write_fits(writer, p, out, fitted_sessions, estimated)
        vols = out["volumes"]
        stats = _mc_stats(out["mc_volumes"])
        fit = out.get("seg_fit") or {}
        rows = ["\t".join(["tissue", "volume_ml", *MC_COLUMNS, *CAL_COLUMNS, *POST_COLUMNS,
                           "mc_samples", "seed", "in_training_space",
                           "outside_training_space"])]
        flag = "true" if p.in_training_space else "false"
        outside = ",".join(p.outside) or "n/a"
        calibrated = {}
        for t in MORPH_TISSUES:
            mc = ([f"{stats[t][c.removeprefix('mc_').removesuffix('_ml')]:.4f}"
                   for c in MC_COLUMNS] if stats else ["n/a"] * len(MC_COLUMNS))
            cal = ["n/a"] * len(CAL_COLUMNS)
            margins = margins_for(model.calibration, t, p.in_training_space)
            if stats and margins:
                wide = widen(stats[t], margins)
                cal = [f"{max(0.0, wide[c[4:-3]]):.4f}" for c in CAL_COLUMNS]
                calibrated[t] = (max(0.0, wide["p2_5"]), wide["p97_5"])
            post = ["n/a"] * len(POST_COLUMNS)
            sd = fit.get("volume_sd_ml", {}).get(t)
            if sd is not None:
                lo, hi = max(0.0, vols[t] - 1.96 * sd), vols[t] + 1.96 * sd
                post = [f"{sd:.4f}", f"{lo:.4f}", f"{hi:.4f}"]
                calibrated[t] = (lo, hi)
            rows.append("\t".join([t, f"{vols[t]:.4f}", *mc, *cal, *post,
                                   str(settings.mc_samples), str(settings.seed), flag,
                                   outside]))
        morph = derivative_path(src, suffix="morph", extension=".tsv")
        writer.write_text(morph, "\n".join(rows) + "\n")
        writer.write_json(morph.replace(".tsv", ".json"), {
            "tissue": {"Description": "GM, WM, CSF, or ICV (= GM + WM + CSF)"},
            "volume_ml": {"Description": "sum of the native-space tissue probabilities times "
                          "the voxel volume", "Units": "mL"},
            "in_training_space": {"Description": "whether the acquisition parameters were "
                                  "inside the model's training space"},
            "outside_training_space": {"Description": "the parameters outside it"},
            **{c: {"Description": MC_DESCRIPTIONS[c], "Units": "mL"}
               for c in (*MC_COLUMNS, *CAL_COLUMNS, *POST_COLUMNS)},
            "mc_samples": {"Description": "Monte-Carlo samples (0: bounds not computed)"},
            "seed": {"Description": "the seed of the Monte-Carlo draws"},
            "Sources": sources, PROVENANCE: prov})
        reg_dice = _registration_dice(out["mask_template"], template)
        qc = []
        if not 800 <= out["brain_volume_ml"] <= 2200:
            qc.append(f"brain mask volume {out['brain_volume_ml']:.0f} mL is outside "
                      "800-2200 mL: check the skull strip")
        if reg_dice < 0.85:
            qc.append(f"brain overlap with the template after registration is {reg_dice:.2f} "
                      "(< 0.85): check the registration figure")
        if not p.in_training_space:
            qc.append("acquisition outside the training space: " + ", ".join(p.outside)
                      + ("" if p.told_params is None else
                         f" (physics branch told {p.told_text()}: --physics-clamp contrast)"))
        if p.low_contrast:
            qc.append(p.low_contrast_note())
        cnr = fit.get("cnr", {}).get("GM-WM")
        if cnr is not None and cnr < LOW_CNR:
            qc.append(f"GM-WM contrast-to-noise of the fitted tissue model is {cnr:.2f} "
                      f"(< {LOW_CNR}): GM and WM are told apart by the template prior more "
                      "than by the image")
        if p.harmonise_refused:
            qc.append("contrast harmonisation not applied, segmented as acquired: "
                      + p.harmonise_refused)
        figures = report.run_figures(writer, src, subject, {**out, "raw": p.run.path},
                                     template)
        vfig = report.volumes_figure(writer, src, vols, stats, calibrated)
        if vfig:
            figures = {"volumes with bounds": vfig, **figures}
        summaries.append({"run": p.run.relpath, "label": p.run.label, "sequence": p.sequence,
                          "params": p.params, "sources": p.sources,
                          "in_training_space": p.in_training_space, "outside": p.outside,
                          "wm_gm_contrast": p.wm_gm_contrast, "low_contrast": p.low_contrast,
                          "warnings": [*p.warnings, *out["strip_warnings"]], "qc": qc,
                          "volumes": vols, "mc": stats,
                          "brain_volume_ml": out["brain_volume_ml"],
                          "registration_dice": reg_dice, "figures": figures,
                          "qmri_fits": fits})
    report.subject_report(writer, subject, summaries, provenance={
        "version": __version__,
        "model": "physics-tied Bayesian" if settings.segmenter == "bayes" else model.name,
        "weights_sha256": model.manifest["weights_sha256"], "template": template.name,
        "template_source": template.source, "seed": settings.seed,
        "settings": asdict(settings)})
    return summaries
