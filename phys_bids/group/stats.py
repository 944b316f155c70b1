"""Site effects of the study table: variance explained by site, within-subject CoV, ComBat."""

from __future__ import annotations

import logging

import numpy as np

from .table import TISSUES

__all__ = ["site_effects", "combat"]

log = logging.getLogger("phys_bids.group")


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
