"""The group level: one study table of every processed scan's volumes and acquisition.

``group/volumes.tsv`` has one row per T1w run: subject, session, the volumes of the
participant level, the out-of-training-space flag, and the site and protocol
descriptors read from the input sidecars; ``group/volumes.json`` is its data
dictionary. A scan's site is, by default, ``InstitutionName`` + ``StationName`` +
``ManufacturersModelName`` (the first present, joined by '/'), or ``Manufacturer``
when none is; a ``site`` column of ``participants.tsv`` overrides it.

``group/site_effects.json`` (and ``group/report.html`` with a plot of volumes by
site) gives, per tissue: counts, mean and SD by site; the proportion of variance
explained by site (eta squared of a one-way model) and, where subjects were scanned
at several sites (travelling subjects), the partial eta squared of site in an
additive subject + site model; and the within-subject coefficient of variation
(SD / mean over a subject's scans, x10^3: mean over subjects with a 95 % bootstrap
interval resampling subjects, min and max).
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..bids.derivatives import DerivativesWriter
from ..errors import UsageError
from .domains import a_distances
from .report import group_report, site_effect_plot, volumes_plot
from .stats import combat, site_effects
from .table import COLUMNS, TISSUES, classical_volumes, collect_volumes, site_of

__all__ = ["run_group", "collect_volumes", "site_of", "site_effects", "COLUMNS"]

log = logging.getLogger("phys_bids.group")


def run_group(bids_root: Path, out_dir: Path, *, classical: bool = True,
              bridge: tuple[str, str] | None = None, bridge_steps: int = 13,
              model: str = "seg-physics", seed: int = 0, device: str = "cpu") -> int:
    """The group level (module docs); ``bridge``: two groups of scans to bridge
    (:mod:`phys_bids.group.bridge`)."""
    from .. import __version__

    if not (out_dir / "dataset_description.json").exists():
        raise UsageError(f"OUTPUT_DIR {out_dir} has no participant-level outputs; run the "
                       "participant level first")
    rows = collect_volumes(bids_root, out_dir)
    if not rows:
        raise UsageError(f"no volumes tables (*_morph.tsv) in {out_dir}; run the participant "
                       "level first")
    if bridge is not None:  # fail on unbridgeable groups before any long computation
        from .bridge import BridgeError, bridge_pairs

        try:
            bridge_pairs(rows, *bridge)
        except BridgeError as err:
            raise UsageError(str(err)) from None
    writer = DerivativesWriter(out_dir, bids_root, version=__version__)
    has_classical = classical and classical_volumes(out_dir, rows)
    lines = ["\t".join(COLUMNS)] + ["\t".join(str(r[c]) for c in COLUMNS) for r in rows]
    writer.write_text("group/volumes.tsv", "\n".join(lines) + "\n")
    writer.write_json("group/volumes.json", {c: {"Description": d} for c, d in COLUMNS.items()})
    effects = site_effects(rows)
    harmonised = combat(rows)
    if harmonised is not None:
        crow = [{**r, **v} for r, v in zip(rows, harmonised["volumes"], strict=True)]
        cols = ["participant_id", "session_id", "source", "site", *(f"{t}_ml" for t in TISSUES)]
        writer.write_text("group/volumes_combat.tsv", "\n".join(
            ["\t".join(cols)] + ["\t".join(f"{r[c]:.4f}" if c.endswith("_ml") else str(r[c])
                                           for c in cols) for r in crow]) + "\n")
        writer.write_json("group/volumes_combat.json", {
            "Description": "ComBat-harmonised volumes (neuroCombat, batch = site"
                           + (f", covariates {harmonised['covariates']}"
                              if harmonised["covariates"] else "") + "); the physics-"
                           "invariant raw volumes are in volumes.tsv",
            **{f"{t}_ml": {"Units": "mL"} for t in TISSUES}})
        after = site_effects(crow)["tissues"]
        for t in TISSUES:
            effects["tissues"][t]["combat"] = {
                k: after[t][k] for k in ("eta2_site", "partial_eta2_site_given_subject",
                                         "within_subject")}
    classical_rows = [r for r in rows if r["GM_atropos_ml"] != "n/a"]
    if has_classical and classical_rows:
        clas = site_effects(classical_rows, "{t}_atropos_ml", TISSUES[:3])["tissues"]
        for t in TISSUES[:3]:
            effects["tissues"][t]["classical"] = {
                k: clas[t][k] for k in ("by_site", "eta2_site",
                                        "partial_eta2_site_given_subject", "within_subject")}
    effects["proxy_a_distance"] = a_distances(out_dir, rows)
    if bridge is not None:
        from .bridge import run_bridge

        res = run_bridge(rows, out_dir, *bridge, model_name=model, steps=bridge_steps,
                         seed=seed, device=device, classical=has_classical)
        writer.write_json("group/bridge.json", res.report)
        writer.write_json("group/bridge_protocol.json", res.protocol)
        writer.write_bytes("group/bridge_contour.png", res.figure)
        effects["bridge"] = {k: res.report[k] for k in (
            "groups", "parameter", "chosen", "sidecars", "test_mean_abs_pct_difference")}
        ev = res.report["test_mean_abs_pct_difference"]
        log.info("bridging %s -> %s: chosen %s; test pairs' mean |%% difference| GM+WM: %s",
                 *bridge, res.report["chosen"], ", ".join(
                     f"{k} {v['mean_pct']:.2f}" for k, v in ev.items()))
    writer.write_json("group/site_effects.json", effects)
    writer.write_bytes("group/volumes_by_site.png", volumes_plot(rows))
    site_png = site_effect_plot(effects)
    if site_png is not None:
        writer.write_bytes("group/site_effects.png", site_png)
    writer.write_text("group/report.html", group_report(effects, site_png is not None))
    for t in ("GM", "WM", "CSF"):
        e = effects["tissues"][t]
        w = e["within_subject"]
        log.info("%s: variance explained by site %s; within-subject CoV x1e3 %s", t,
                 "n/a" if e["eta2_site"] is None else f"{e['eta2_site']:.3f}",
                 "n/a" if w is None else f"{w['mean_cov_x1e3']:.1f}")
    n_sites = len({r["site"] for r in rows})
    log.info("group/volumes.tsv: %d scan(s) of %d subject(s) at %d site(s)", len(rows),
             len({r["participant_id"] for r in rows}), n_sites)
    return 0
