"""Proxy A-distances between sites: how well a classifier tells the sites' images apart."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = ["image_features", "proxy_a_distance", "a_distances"]


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
    from ..bids.outputs import derivative_path, model_desc
    from ..models.qmri_net import DEFAULT_MODEL

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
