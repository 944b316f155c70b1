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

import csv
import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np

from .bids.derivatives import DerivativesWriter
from .bids.sidecars import load_sidecar, parse_entities

__all__ = ["run_group", "collect_volumes", "site_of", "site_effects", "COLUMNS"]

log = logging.getLogger("phys_bids.group")

DESCRIPTORS = ("Manufacturer", "ManufacturersModelName", "InstitutionName", "StationName",
               "DeviceSerialNumber", "MagneticFieldStrength")
TISSUES = ("GM", "WM", "CSF", "ICV")

COLUMNS = {
    "participant_id": "subject label (sub-X)",
    "session_id": "session label (ses-Y) or n/a",
    "source": "the input T1w image, relative to BIDS_DIR",
    "site": "site (rule in the group module docs; participants.tsv 'site' column wins)",
    **{f"{t}_ml": f"{t} volume in mL (participant level, *_morph.tsv)" for t in TISSUES},
    **{f"{t}_{c}": f"{t}: {c} of *_morph.tsv (n/a without --mc-samples)" for t in TISSUES
       for c in ("mc_median_ml", "cal_p2_5_ml", "cal_p97_5_ml")},
    "sequence": "sequence the model was told (MPRAGE or SPGR)",
    "in_training_space": "acquisition inside the model's training space",
    "outside_training_space": "parameters outside it",
    "wm_gm_contrast": "predicted WM-GM contrast of the protocol, (WM - GM) / GM of the prior "
                      "tissue means (n/a before phys-bids recorded it)",
    "low_contrast": "SPGR below the contrast where the networks' volumes start to move "
                    "(flagged in the participant report)",
    **{d: f"{d} from the input sidecar" for d in DESCRIPTORS},
    "parameters": "acquisition parameters used (JSON, SI units)",
    **{f"{t}_atropos_ml": f"{t} volume in mL of the classical segmentation (Atropos k-means, "
       "3 classes, in the same brain mask; n/a with --no-classical)" for t in TISSUES[:3]},
}


def site_of(sidecar: dict) -> str:
    parts = [str(sidecar[k]) for k in ("InstitutionName", "StationName",
                                       "ManufacturersModelName") if sidecar.get(k)]
    if parts:
        return "/".join(parts)
    return str(sidecar.get("Manufacturer", "n/a"))


def _participants(root: Path) -> dict[str, dict]:
    tsv = root / "participants.tsv"
    if not tsv.exists():
        return {}
    with open(tsv, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return {r["participant_id"]: r for r in rows if "participant_id" in r}


def collect_volumes(bids_root: Path, out_dir: Path) -> list[dict]:
    """One row per participant-level volumes table found in ``out_dir``."""
    people = _participants(bids_root)
    sites = {k: r["site"] for k, r in people.items() if r.get("site") not in (None, "", "n/a")}
    rows = []
    for tsv in sorted(out_dir.glob("sub-*/**/*_morph.tsv")):
        side = json.loads(tsv.with_suffix(".json").read_text())
        src = side["Sources"][0].split(":", 2)[2]
        with open(tsv, newline="") as f:
            vols = {r["tissue"]: r for r in csv.DictReader(f, delimiter="\t")}
        ents, _ = parse_entities(src)
        sidecar = load_sidecar(bids_root / src, bids_root) if (bids_root / src).exists() else {}
        prov = side.get("PhysBIDS", {})
        acq = prov.get("Acquisition", {})
        row = {"participant_id": f"sub-{ents['sub']}",
               "session_id": f"ses-{ents['ses']}" if "ses" in ents else "n/a",
               "source": src,
               "site": sites.get(f"sub-{ents['sub']}", site_of(sidecar))}
        for t in TISSUES:
            row[f"{t}_ml"] = vols[t]["volume_ml"] if t in vols else "n/a"
        for t in TISSUES:
            for c in ("mc_median_ml", "cal_p2_5_ml", "cal_p97_5_ml"):
                row[f"{t}_{c}"] = vols.get(t, {}).get(c) or "n/a"
        row["sequence"] = acq.get("Sequence", "n/a")
        row["in_training_space"] = str(prov.get("InTrainingSpace", "n/a")).lower()
        row["outside_training_space"] = ",".join(prov.get("OutsideTrainingSpace", [])) or "n/a"
        contrast = prov.get("PredictedContrast") or {}
        row["wm_gm_contrast"] = contrast.get("WMGM", "n/a")
        row["low_contrast"] = str(contrast.get("Low", "n/a")).lower()
        for d in DESCRIPTORS:
            row[d] = sidecar.get(d, "n/a")
        row["parameters"] = json.dumps(acq.get("Parameters", {}), sort_keys=True)
        for t in TISSUES[:3]:
            row[f"{t}_atropos_ml"] = "n/a"
        person = people.get(row["participant_id"], {})
        row["age"], row["sex"] = person.get("age", "n/a"), person.get("sex", "n/a")
        rows.append(row)
    return rows


def classical_volumes(out_dir: Path, rows: list[dict]) -> bool:
    """Fill the ``*_atropos_ml`` columns: Atropos k-means (:mod:`phys_bids.classical`) on
    each scan's preprocessed native T1w inside its brain mask - the same images and mask
    as the network's. Returns False (columns left n/a) when a scan lacks them."""
    import time

    from .bids.outputs import derivative_path
    from .classical import ClassicalSegmentationError, atropos_volumes

    t0 = time.time()
    for i, r in enumerate(rows):
        name = Path(r["source"]).name
        img_p = out_dir / derivative_path(name, suffix="T1w", desc="preproc")
        mask_p = out_dir / derivative_path(name, suffix="mask", desc="brain")
        if not (img_p.exists() and mask_p.exists()):
            log.info("classical segmentation skipped: %s has no preprocessed T1w", name)
            return False
        img = nib.load(str(img_p))
        mask = np.asanyarray(nib.load(str(mask_p)).dataobj) > 0
        voxel_ml = float(np.prod(img.header.get_zooms()[:3])) / 1000.0
        try:
            vols = atropos_volumes(img.get_fdata(dtype=np.float32), mask, voxel_ml)
        except ClassicalSegmentationError as err:
            log.warning("classical segmentation of %s: %s; its *_atropos_ml stay n/a", name,
                        err)
            continue
        for t, v in vols.items():
            r[f"{t}_atropos_ml"] = f"{v:.4f}"
        log.info("classical segmentation %d/%d (%s): GM %.1f WM %.1f CSF %.1f mL (%.0f s)",
                 i + 1, len(rows), name, vols["GM"], vols["WM"], vols["CSF"],
                 time.time() - t0)
    return True


def _site_variance(values: np.ndarray, sites: list[str], subjects: list[str]) -> dict:
    """Variance explained by site: one-way (eta squared) and, when subjects were scanned
    at several sites, after removing subject means (partial eta squared of the additive
    subject + site model, fitted by least squares)."""
    y = values - values.mean()
    ss_total = float(y @ y)
    out = {"eta2_site": None, "partial_eta2_site_given_subject": None}
    usites = sorted(set(sites))
    if len(usites) < 2 or ss_total == 0:
        return out
    site_x = np.array([[s == u for u in usites[1:]] for s in sites], dtype=float)
    subj = sorted(set(subjects))
    subj_x = np.array([[s == u for u in subj[1:]] for s in subjects], dtype=float)
    ones = np.ones((len(values), 1))

    def rss(x):
        beta, *_ = np.linalg.lstsq(x, values, rcond=None)
        r = values - x @ beta
        return float(r @ r)

    out["eta2_site"] = 1.0 - rss(np.hstack([ones, site_x])) / ss_total
    if len(subj) > 1 and len(values) > len(subj) + len(usites) - 1:
        full = rss(np.hstack([ones, subj_x, site_x]))
        reduced = rss(np.hstack([ones, subj_x]))
        if reduced > 0:
            out["partial_eta2_site_given_subject"] = (reduced - full) / reduced
    return out


def site_effects(rows: list[dict], column: str = "{t}_ml",
                 tissues_of: tuple[str, ...] = TISSUES) -> dict:
    """Per-tissue site statistics of the study table (see the module docs); ``column``
    names the volume column of each tissue (``{t}_atropos_ml``: the classical one)."""
    tissues = {}
    sites = [r["site"] for r in rows]
    subjects = [r["participant_id"] for r in rows]
    for t in tissues_of:
        vals = np.array([float(r[column.format(t=t)]) for r in rows])
        by_site = {}
        for s in sorted(set(sites)):
            v = vals[[x == s for x in sites]]
            by_site[s] = {"n": int(v.size), "mean_ml": float(v.mean()),
                          "sd_ml": float(v.std(ddof=1)) if v.size > 1 else None}
        covs = []
        for sub in sorted(set(subjects)):
            v = vals[[x == sub for x in subjects]]
            if v.size > 1 and v.mean() > 0:
                covs.append(float(v.std(ddof=1) / v.mean()))
        within = None
        if covs:
            # 95 % bootstrap interval of the mean over subjects (resampling subjects;
            # seeded, so the table is reproducible)
            boot = np.random.default_rng(0).choice(covs, size=(2000, len(covs))).mean(1)
            lo, hi = np.percentile(boot, [2.5, 97.5])
            within = {"subjects": len(covs), "mean_cov_x1e3": 1e3 * float(np.mean(covs)),
                      "ci95_cov_x1e3": [1e3 * float(lo), 1e3 * float(hi)],
                      "min_cov_x1e3": 1e3 * min(covs), "max_cov_x1e3": 1e3 * max(covs)}
        tissues[t] = {"by_site": by_site, **_site_variance(vals, sites, subjects),
                      "within_subject": within}
    return {"scans": len(rows), "subjects": len(set(subjects)), "sites": sorted(set(sites)),
            "tissues": tissues}


def combat(rows: list[dict]) -> dict | None:
    """ComBat-harmonised volumes (neuroCombat, Fortin et al. 2018: empirical Bayes
    location/scale per site), with ``age``/``sex`` from participants.tsv as covariates
    when every row has them. Returns None (with the reason logged) when ComBat cannot
    run: fewer than two sites, or a site with fewer than two scans.

    The harmonised volumes are reported beside the raw ones, never instead of them.
    """
    import contextlib
    import io

    import pandas as pd
    from neuroCombat import neuroCombat

    sites = [r["site"] for r in rows]
    counts = {s: sites.count(s) for s in set(sites)}
    if len(counts) < 2 or min(counts.values()) < 2:
        log.info("ComBat skipped: needs >= 2 sites with >= 2 scans each (have %s)",
                 dict(sorted(counts.items())))
        return None
    data = np.array([[float(r[f"{t}_ml"]) for r in rows] for t in TISSUES])
    covars = pd.DataFrame({"site": sites})
    cat, num = [], []
    if all(r.get("age") not in (None, "n/a", "") for r in rows):
        covars["age"] = [float(r["age"]) for r in rows]
        num.append("age")
    if all(r.get("sex") not in (None, "n/a", "") for r in rows):
        covars["sex"] = [str(r["sex"]) for r in rows]
        cat.append("sex")
    with contextlib.redirect_stdout(io.StringIO()), np.errstate(all="ignore"):
        out = neuroCombat(dat=data, covars=covars, batch_col="site",
                          categorical_cols=cat or None, continuous_cols=num or None)["data"]
    for i, t in enumerate(TISSUES):  # a constant volume has no scale to estimate
        if not np.all(np.isfinite(out[i])):
            log.info("ComBat left %s as it is (no variance to model)", t)
            out[i] = data[i]
    return {"covariates": cat + num,
            "volumes": [{f"{t}_ml": float(out[i, j]) for i, t in enumerate(TISSUES)}
                        for j in range(len(rows))]}


def image_features(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
                   patches: int = 64, size: int = 12) -> np.ndarray:
    """Per random brain patch: 9 intensity deciles of the image divided by its brain mean
    (the features of the proxy A-distance)."""
    img = image / max(float(image[mask].mean()), 1e-12)
    centres = np.argwhere(mask)
    out = []
    h = size // 2
    for c in centres[rng.choice(len(centres), size=patches, replace=len(centres) < patches)]:
        sl = tuple(slice(max(0, int(v) - h), int(v) + h) for v in c)
        vals = img[sl][mask[sl]]
        out.append(np.percentile(vals, np.arange(10, 100, 10)))
    return np.asarray(out)


def proxy_a_distance(features: list[np.ndarray], sites: list[str]) -> dict:
    """Proxy A-distance between each pair of sites (Ben-David et al. 2007; used by
    mr-acquisition-invariant-representation section 3.1): a linear classifier (logistic
    regression on standardised features) tells site A's patches from site B's; with its
    cross-validated error, d = 2 (1 - 2 err), clipped to [0, 2]. Folds are grouped by
    scan, so patches of one scan never train and test the same classifier, and
    stratified by site, so that every training set holds both sites (with two scans
    per site, plain grouped folds can put both of one site's scans in one fold)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    out = {}
    usites = sorted(set(sites))
    for i, a in enumerate(usites):
        for b in usites[i + 1:]:
            idx = [k for k, s in enumerate(sites) if s in (a, b)]
            n_scans = {s: sum(sites[k] == s for k in idx) for s in (a, b)}
            if min(n_scans.values()) < 2:
                continue
            x = np.concatenate([features[k] for k in idx])
            y = np.concatenate([[sites[k] == a] * len(features[k]) for k in idx])
            groups = np.concatenate([[k] * len(features[k]) for k in idx])
            folds = min(3, min(n_scans.values()))
            clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
            acc = cross_val_score(clf, x, y, groups=groups, cv=StratifiedGroupKFold(folds)).mean()
            out[f"{a} | {b}"] = float(np.clip(2 * (1 - 2 * (1 - acc)), 0, 2))
    return out


def a_distances(out_dir: Path, rows: list[dict], seed: int = 0) -> dict:
    """Proxy A-distances between sites for each image kind a scan has: the preprocessed
    T1w (raw intensities), the harmonised image and the estimated R1 map."""
    from .bids.outputs import derivative_path, model_desc
    from .models.qmri_net import DEFAULT_MODEL

    kinds = {"preproc_T1w": {"suffix": "T1w", "desc": "preproc"},
             "harmonized_T1w": {"suffix": "T1w", "desc": "harmonized"},
             "R1map": {"suffix": "R1map", "desc": model_desc(DEFAULT_MODEL)}}
    feats: dict[str, list] = {kind: [] for kind in kinds}
    rngs = {kind: np.random.default_rng(seed) for kind in kinds}
    for r in rows:  # scan by scan, so that each brain mask is read once for all kinds
        name = Path(r["source"]).name
        mask_p = out_dir / derivative_path(name, suffix="mask", desc="brain")
        paths = {kind: out_dir / derivative_path(name, **kinds[kind]) for kind in feats}
        for kind, path in paths.items():
            if not (mask_p.exists() and path.exists()):
                del feats[kind]  # a kind is compared only when every scan has it
        if not feats:
            break
        mask = np.asanyarray(nib.load(str(mask_p)).dataobj) > 0
        for kind in feats:
            img = nib.load(str(paths[kind])).get_fdata(dtype=np.float32)
            feats[kind].append(image_features(img, mask & (img > 0), rngs[kind]))
    sites = [r["site"] for r in rows]
    result = {}
    for kind, f in feats.items():
        d = proxy_a_distance(f, sites) if len(set(sites)) > 1 else {}
        if d:
            result[kind] = d
    return result


def _plot(rows: list[dict]) -> bytes:
    import matplotlib

    from .report import png_bytes

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sites = sorted({r["site"] for r in rows})
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.4), dpi=80)
    for ax, t in zip(axes, ("GM", "WM", "CSF"), strict=True):
        for i, s in enumerate(sites):
            v = [float(r[f"{t}_ml"]) for r in rows if r["site"] == s]
            ax.plot([i] * len(v), v, "o", alpha=0.7)
        by_subject: dict[str, list] = {}
        for r in rows:
            by_subject.setdefault(r["participant_id"], []).append(
                (sites.index(r["site"]), float(r[f"{t}_ml"])))
        for pts in by_subject.values():
            if len(pts) > 1:
                pts.sort()
                ax.plot(*zip(*pts, strict=True), "-", color="grey", lw=0.6)
        ax.set_xticks(range(len(sites)), sites, rotation=20, fontsize=7)
        ax.set_title(f"{t} (mL)")
    return png_bytes(fig)


def _site_effect_plot(effects: dict) -> bytes | None:
    """Share of volume variance explained by site (after subject when there are
    travelling subjects, else one-way), per tissue: physics model raw, after ComBat,
    classical segmentation. None when no site statistic exists."""
    import matplotlib

    from .report import png_bytes

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def value(e):
        if not e:
            return None
        v = e.get("partial_eta2_site_given_subject")
        return e.get("eta2_site") if v is None else v

    tissues = ("GM", "WM", "CSF")
    series = {"phys-bids": [value(effects["tissues"][t]) for t in tissues],
              "phys-bids + ComBat": [value(effects["tissues"][t].get("combat"))
                                     for t in tissues],
              "classical (Atropos)": [value(effects["tissues"][t].get("classical"))
                                      for t in tissues]}
    series = {k: v for k, v in series.items() if any(x is not None for x in v)}
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6, 3), dpi=80)
    width = 0.8 / len(series)
    for i, (name, vals) in enumerate(series.items()):
        xs = [k + i * width for k in range(len(tissues))]
        ax.bar(xs, [0 if v is None else v for v in vals], width, label=name)
    ax.set_xticks([k + width * (len(series) - 1) / 2 for k in range(len(tissues))], tissues)
    ax.set_ylabel("variance explained by site")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    return png_bytes(fig)


def _report(effects: dict, site_plot: bool = False) -> str:
    import html

    rows = []
    for t, e in effects["tissues"].items():
        w = e["within_subject"]
        eta = e["eta2_site"]
        peta = e["partial_eta2_site_given_subject"]
        def fmt(x, f):
            return "n/a" if x is None else format(x, f)
        def cov(w):
            if not w:
                return "n/a"
            lo, hi = w.get("ci95_cov_x1e3", (None, None))
            return f"{w['mean_cov_x1e3']:.1f}" + ("" if lo is None else
                                                  f" [{lo:.1f}, {hi:.1f}]")
        cb = e.get("combat") or {}
        cl = e.get("classical") or {}
        rows.append(f"<tr><td>{t}</td><td>{fmt(eta, '.3f')}</td><td>{fmt(peta, '.3f')}</td>"
                    f"<td>{cov(w)}</td><td>{fmt(cb.get('eta2_site'), '.3f')}</td>"
                    f"<td>{fmt(cb.get('partial_eta2_site_given_subject'), '.3f')}</td>"
                    f"<td>{fmt(cl.get('eta2_site'), '.3f')}</td>"
                    f"<td>{fmt(cl.get('partial_eta2_site_given_subject'), '.3f')}</td>"
                    f"<td>{cov(cl.get('within_subject'))}</td></tr>")
    pad = effects.get("proxy_a_distance") or {}
    pairs = sorted({p for d in pad.values() for p in d})
    arows = "".join(f"<tr><td>{html.escape(p)}</td>" + "".join(
        f"<td>{pad[k][p]:.2f}</td>" if p in pad[k] else "<td>n/a</td>" for k in pad) + "</tr>"
        for p in pairs)
    ahead = "".join(f"<th>{html.escape(k)}</th>" for k in pad)
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>phys-bids group</title>"
            "<style>body{font-family:sans-serif;max-width:1000px;margin:auto}td,th{border:1px "
            "solid #bbb;padding:2px 8px}table{border-collapse:collapse}</style></head><body>"
            f"<h1>phys-bids group report</h1><p>{effects['scans']} scans, "
            f"{effects['subjects']} subjects, sites: "
            f"{html.escape(', '.join(effects['sites']))}</p>"
            "<h2>Volumes by site</h2><img src='volumes_by_site.png' alt='volumes by site'>"
            "<p>Lines join the scans of one subject.</p><h2>Site effects</h2><table><tr>"
            "<th>tissue</th><th>variance explained by site</th><th>... after subject</th>"
            "<th>within-subject CoV x10^3 [95 % CI]</th><th>after ComBat: by site</th>"
            "<th>... after subject</th><th>classical (Atropos): by site</th>"
            "<th>... after subject</th><th>... within-subject CoV x10^3</th></tr>"
            + "".join(rows) + "</table>"
            + ("<img src='site_effects.png' alt='variance explained by site'><p>Variance "
               "explained by site after subject (travelling subjects), else one-way.</p>"
               if site_plot else "")
            + "<p>ComBat volumes (group/volumes_combat.tsv) are shown beside the raw ones, never "
            "instead of them.</p><h2>Proxy A-distance between sites</h2>"
            "<p>0: a linear classifier cannot tell the sites' brain-tissue intensities apart; "
            "2: it always can.</p>"
            + (f"<table><tr><th>sites</th>{ahead}</tr>{arows}</table>" if pad else
               "<p>n/a (needs two sites with two scans each)</p>") + _bridge_html(effects)
            + "</body></html>\n")


def _bridge_html(effects: dict) -> str:
    import html

    b = effects.get("bridge")
    if not b:
        return ""
    names = {"classical_uncorrected": "classical (Atropos), uncorrected",
             "classical_linear": "classical, linear correction (training pairs)",
             "physics_as_processed": "physics model, sidecar parameters",
             "physics_linear": "physics model, linear correction",
             "physics_bridged": "physics model, bridged (searched parameters)"}
    ev = b["test_mean_abs_pct_difference"]
    rows = "".join(f"<tr><td>{names.get(k, k)}</td><td>{v['mean_pct']:.2f}</td>"
                   f"<td>{v['GM_pct']:.2f}</td><td>{v['WM_pct']:.2f}</td></tr>"
                   for k, v in ev.items())
    side = b.get("sidecars")
    return (f"<h2>Bridging {html.escape(b['groups']['A'])} &rarr; "
            f"{html.escape(b['groups']['B'])}</h2><p>Searched on the training pairs: "
            f"{html.escape(b['parameter']['A'])} {b['chosen']['A']:.3g} (A), "
            f"{html.escape(b['parameter']['B'])} {b['chosen']['B']:.3g} (B)"
            + (f"; the sidecars say {side['A']:.3g} and {side['B']:.3g}" if side else "")
            + ". Written as group/bridge_protocol.json for the participant level.</p>"
            "<img src='bridge_contour.png' alt='bridging search'>"
            "<table><tr><th>test pairs: mean |% difference| A vs B</th><th>GM+WM</th>"
            f"<th>GM</th><th>WM</th></tr>{rows}</table>")


def run_group(bids_root: Path, out_dir: Path, *, classical: bool = True,
              bridge: tuple[str, str] | None = None, bridge_steps: int = 13,
              model: str = "seg-physics", seed: int = 0, device: str = "cpu") -> int:
    """The group level (module docs); ``bridge``: two groups of scans to bridge
    (:mod:`phys_bids.bridge`)."""
    from . import __version__
    from .cli import CliError

    if not (out_dir / "dataset_description.json").exists():
        raise CliError(f"OUTPUT_DIR {out_dir} has no participant-level outputs; run the "
                       "participant level first")
    rows = collect_volumes(bids_root, out_dir)
    if not rows:
        raise CliError(f"no volumes tables (*_morph.tsv) in {out_dir}; run the participant "
                       "level first")
    if bridge is not None:  # fail on unbridgeable groups before any long computation
        from .bridge import BridgeError, bridge_pairs

        try:
            bridge_pairs(rows, *bridge)
        except BridgeError as err:
            raise CliError(str(err)) from None
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
    writer.write_bytes("group/volumes_by_site.png", _plot(rows))
    site_png = _site_effect_plot(effects)
    if site_png is not None:
        writer.write_bytes("group/site_effects.png", site_png)
    writer.write_text("group/report.html", _report(effects, site_png is not None))
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
