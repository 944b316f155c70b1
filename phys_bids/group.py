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
(SD / mean over a subject's scans, x10^3: mean, min and max over subjects).
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
    **{d: f"{d} from the input sidecar" for d in DESCRIPTORS},
    "parameters": "acquisition parameters used (JSON, SI units)",
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
        for d in DESCRIPTORS:
            row[d] = sidecar.get(d, "n/a")
        row["parameters"] = json.dumps(acq.get("Parameters", {}), sort_keys=True)
        person = people.get(row["participant_id"], {})
        row["age"], row["sex"] = person.get("age", "n/a"), person.get("sex", "n/a")
        rows.append(row)
    return rows


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


def site_effects(rows: list[dict]) -> dict:
    """Per-tissue site statistics of the study table (see the module docs)."""
    tissues = {}
    sites = [r["site"] for r in rows]
    subjects = [r["participant_id"] for r in rows]
    for t in TISSUES:
        vals = np.array([float(r[f"{t}_ml"]) for r in rows])
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
        within = ({"subjects": len(covs), "mean_cov_x1e3": 1e3 * float(np.mean(covs)),
                   "min_cov_x1e3": 1e3 * min(covs), "max_cov_x1e3": 1e3 * max(covs)}
                  if covs else None)
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
    scan, so patches of one scan never train and test the same classifier."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, cross_val_score
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
            acc = cross_val_score(clf, x, y, groups=groups, cv=GroupKFold(folds)).mean()
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
    import io

    import matplotlib

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
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _report(effects: dict) -> str:
    import html

    rows = []
    for t, e in effects["tissues"].items():
        w = e["within_subject"]
        eta = e["eta2_site"]
        peta = e["partial_eta2_site_given_subject"]
        def fmt(x, f):
            return "n/a" if x is None else format(x, f)
        cov = None if w is None else w["mean_cov_x1e3"]
        cb = e.get("combat") or {}
        rows.append(f"<tr><td>{t}</td><td>{fmt(eta, '.3f')}</td><td>{fmt(peta, '.3f')}</td>"
                    f"<td>{fmt(cov, '.1f')}</td><td>{fmt(cb.get('eta2_site'), '.3f')}</td>"
                    f"<td>{fmt(cb.get('partial_eta2_site_given_subject'), '.3f')}</td></tr>")
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
            "<th>within-subject CoV x10^3</th><th>after ComBat: by site</th>"
            "<th>... after subject</th></tr>" + "".join(rows) + "</table>"
            "<p>ComBat volumes (group/volumes_combat.tsv) are shown beside the raw ones, never "
            "instead of them.</p><h2>Proxy A-distance between sites</h2>"
            "<p>0: a linear classifier cannot tell the sites' brain-tissue intensities apart; "
            "2: it always can.</p>"
            + (f"<table><tr><th>sites</th>{ahead}</tr>{arows}</table>" if pad else
               "<p>n/a (needs two sites with two scans each)</p>") + "</body></html>\n")


def run_group(bids_root: Path, out_dir: Path) -> int:
    from . import __version__
    from .cli import CliError

    if not (out_dir / "dataset_description.json").exists():
        raise CliError(f"OUTPUT_DIR {out_dir} has no participant-level outputs; run the "
                       "participant level first")
    rows = collect_volumes(bids_root, out_dir)
    if not rows:
        raise CliError(f"no volumes tables (*_morph.tsv) in {out_dir}; run the participant "
                       "level first")
    writer = DerivativesWriter(out_dir, bids_root, version=__version__)
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
    effects["proxy_a_distance"] = a_distances(out_dir, rows)
    writer.write_json("group/site_effects.json", effects)
    writer.write_bytes("group/volumes_by_site.png", _plot(rows))
    writer.write_text("group/report.html", _report(effects))
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
