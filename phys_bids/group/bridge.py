"""Bridging a protocol change with the physics model (physics-informed-segmentation 3.5).

A study changes its protocol (scanner upgrade, new sequence) and scans the same
subjects under both, but the parameters the network should be told are unknown or
untrusted. Bridging searches them from the data:

1. pairs: every subject scanned in group A and in group B (a group is a site, a
   session ``ses-X`` or an acquisition label ``acq-X``), split by subject, with the
   run's seed, into a training and a test subset (half each by default);
2. sweep: each image of a pair is segmented with the physics model told each value of
   the protocol's main parameter on a grid over the model's training range (MPRAGE:
   inversion time; SPGR: flip angle), everything else as in its sidecar. The network
   runs once per value on the preprocessed image in template space (no Monte-Carlo),
   and the tissue volume is the sum of the probabilities;
3. search: the pair (value for A, value for B) minimising the mean absolute % volume
   difference of GM and WM over the training pairs (the paper's white point); the
   per-subject minima of the test pairs are the black points of the contour plot;
4. evaluation on the test pairs, mean absolute % difference over GM and WM:
   the classical segmentation (Atropos) uncorrected and with a linear correction
   (B ~ a + b A per tissue, fitted on the training pairs), the physics model as
   processed (sidecar parameters), with the same linear correction, and bridged
   (told the searched pair) - the paper's 5 % -> 3 % -> 2 % comparison.

The chosen values are written as a protocol file (docs/protocol-file.md) naming every
scan of A and B, so that the participant level can be run again with them.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = ["BRIDGE_PARAMETERS", "BridgeError", "bridge_pairs", "split_pairs", "sweep_volumes",
           "search", "evaluate", "run_bridge"]

log = logging.getLogger("phys_bids.group.bridge")

#: the parameter searched per sequence: (model key, sidecar field, in-distribution range)
BRIDGE_PARAMETERS = {
    "MPRAGE": ("ti", "InversionTime", (0.6, 1.2)),
    "SPGR": ("fa", "FlipAngle", (5.0, 35.0)),
}
TISSUES = ("GM", "WM", "CSF")
SEARCHED = (0, 1)  # GM and WM, as the paper's figure 4


class BridgeError(ValueError):
    """Scans that cannot be bridged (too few pairs, mixed sequences, missing outputs)."""


def _in_group(row: dict, group: str) -> bool:
    name = Path(row["source"]).name
    g = group.removeprefix("ses-").removeprefix("acq-")
    return (row["site"] == group or row["session_id"] in (group, f"ses-{g}")
            or f"_acq-{g}_" in name)


def bridge_pairs(rows: list[dict], a: str, b: str) -> list[tuple[dict, dict]]:
    """(row in A, row in B) per subject scanned in both; the first run of each when a
    subject has several. A scan in both groups is an error (the groups must differ)."""
    pairs = []
    for sub in sorted({r["participant_id"] for r in rows}):
        ra = [r for r in rows if r["participant_id"] == sub and _in_group(r, a)]
        rb = [r for r in rows if r["participant_id"] == sub and _in_group(r, b)]
        both = {r["source"] for r in ra} & {r["source"] for r in rb}
        if both:
            raise BridgeError(f"--bridge {a} {b}: {sorted(both)[0]} is in both groups; name "
                              "two different sites, sessions or acquisition labels")
        if ra and rb:
            pairs.append((ra[0], rb[0]))
    if len(pairs) < 3:
        raise BridgeError(f"--bridge {a} {b}: {len(pairs)} subject(s) scanned in both; "
                          "bridging needs >= 3 (>= 2 to search, >= 1 to test); a group is a "
                          "site, a session (ses-X) or an acquisition label (acq-X)")
    for side, idx in (("A", 0), ("B", 1)):
        seqs = {p[idx]["sequence"] for p in pairs}
        if len(seqs) != 1 or next(iter(seqs)) not in BRIDGE_PARAMETERS:
            raise BridgeError(f"--bridge: the scans of {side} must share one sequence of "
                              f"{sorted(BRIDGE_PARAMETERS)}; found {sorted(seqs)}")
    return pairs


def split_pairs(n: int, seed: int, train_fraction: float = 0.5) -> tuple[list[int], list[int]]:
    """Training and test indices of ``n`` pairs: a seeded permutation, the larger half
    (at least two) for training, at least one for testing.

    >>> split_pairs(5, 0)
    ([2, 3, 4], [0, 1])
    >>> split_pairs(3, 0)
    ([0, 2], [1])
    """
    perm = np.random.default_rng(seed).permutation(n)
    k = min(max(2, int(np.ceil(train_fraction * n))), n - 1)
    return sorted(int(i) for i in perm[:k]), sorted(int(i) for i in perm[k:])


def _template_images(out_dir: Path, source: str) -> tuple[np.ndarray, np.ndarray, float]:
    """The preprocessed T1w in template space and its brain mask (the model grid)."""
    from ..bids.outputs import derivative_path

    folder = (out_dir / derivative_path(Path(source).name, suffix="T1w")).parent
    stem = Path(source).name.split("_T1w")[0]
    imgs = sorted(folder.glob(f"{stem}_space-*_desc-preproc_T1w.nii.gz"))
    dsegs = sorted(folder.glob(f"{stem}_space-*_dseg.nii.gz"))
    if not imgs or not dsegs:
        raise BridgeError(f"{source}: no template-space preprocessed T1w and dseg in "
                          f"{folder}; run the participant level first")
    img = nib.load(str(imgs[0]))
    mask = np.asanyarray(nib.load(str(dsegs[0])).dataobj) > 0
    voxel_ml = float(np.prod(img.header.get_zooms()[:3])) / 1000.0
    return img.get_fdata(dtype=np.float32), mask, voxel_ml


def sweep_volumes(model, image: np.ndarray, mask: np.ndarray, voxel_ml: float,
                  sequence: str, params: dict, grid: np.ndarray, *,
                  device: str = "cpu") -> np.ndarray:
    """Tissue volumes (mL; GM, WM, CSF) of ``image`` segmented with the model told each
    value of the sequence's bridging parameter in ``grid``: shape (len(grid), 3)."""
    import torch

    from ..models.inference import sliding_window_logits
    from ..models.segment import OVERLAP, WINDOW, network_input

    key = BRIDGE_PARAMETERS[sequence][0]
    box, x, m, _ = network_input(model, image, mask, sequence, params, device=device)
    out = np.zeros((len(grid), 3))
    with torch.no_grad():
        for i, v in enumerate(grid):
            p = {**params, key: float(v)}
            phys = model.encoder.encode(sequence, {k: [float(w)] for k, w in p.items()})
            logits = sliding_window_logits(model.network, x, phys.to(device), window=WINDOW,
                                           overlap=OVERLAP)
            prob = torch.softmax(logits[0].double(), 0) * m
            out[i] = prob[1:4].reshape(3, -1).sum(1).cpu().numpy() * voxel_ml
    return out


def percent_difference(va: np.ndarray, vb: np.ndarray) -> np.ndarray:
    """|A - B| / mean(A, B) x 100, elementwise.

    >>> float(percent_difference(np.array(99.0), np.array(101.0)))
    2.0
    """
    return 100.0 * np.abs(va - vb) / ((va + vb) / 2.0)


def search(va: np.ndarray, vb: np.ndarray) -> dict:
    """The bridging search. ``va``, ``vb``: (pairs, grid, 3) volumes of A and B.

    Returns the objective maps ``D[t][p, q]`` (mean % difference over the pairs when A is
    told grid value p and B value q; per tissue and their GM+WM mean) and the argmin.
    """
    d = percent_difference(va[:, :, None, :], vb[:, None, :, :]).mean(0)  # (G, G, 3)
    objective = d[..., list(SEARCHED)].mean(-1)
    p, q = np.unravel_index(int(np.argmin(objective)), objective.shape)
    return {"objective": objective, "per_tissue": d, "index": (int(p), int(q))}


def _linear(train_a: np.ndarray, train_b: np.ndarray, test_a: np.ndarray) -> np.ndarray:
    """Per tissue, B ~ a + b A fitted on the training pairs, applied to the test A; an
    offset only (b = 1) when the training A volumes do not vary.

    >>> _linear(np.array([[1.0], [2.0]]), np.array([[3.0], [5.0]]), np.array([[4.0]]))
    array([[9.]])
    >>> _linear(np.array([[1.0], [1.0]]), np.array([[3.0], [5.0]]), np.array([[4.0]]))
    array([[7.]])
    """
    out = np.empty_like(test_a)
    for t in range(test_a.shape[1]):
        if np.ptp(train_a[:, t]) > 0:
            b, a = np.polyfit(train_a[:, t], train_b[:, t], 1)
        else:
            b, a = 1.0, float(np.mean(train_b[:, t] - train_a[:, t]))
        out[:, t] = a + b * test_a[:, t]
    return out


def evaluate(train: list[int], test: list[int], *, processed: np.ndarray,
             classical: np.ndarray | None, bridged: np.ndarray) -> dict:
    """Mean absolute % difference A vs B over the test pairs (GM and WM; per tissue too).

    ``processed``, ``classical``: (pairs, 2, 3) volumes of A and B; ``bridged``: the
    physics volumes at the searched pair, same shape.
    """
    def summary(a, b):
        d = percent_difference(a, b)
        return {"mean_pct": float(d[:, list(SEARCHED)].mean()),
                **{f"{t}_pct": float(d[:, i].mean()) for i, t in enumerate(TISSUES)}}

    out = {}
    sets = {"physics_as_processed": processed, "physics_bridged": bridged}
    if classical is not None:
        sets["classical_uncorrected"] = classical
    for name, v in sets.items():
        out[name] = summary(v[test, 0], v[test, 1])
    for name, v in (("physics_linear", processed), ("classical_linear", classical)):
        if v is not None:
            out[name] = summary(_linear(v[train, 0], v[train, 1], v[test, 0]), v[test, 1])
    return out


@dataclass
class BridgeResult:
    report: dict
    protocol: dict
    figure: bytes


def _plot(grid_a, grid_b, res: dict, black: list, truth, labels) -> bytes:
    import matplotlib

    from ..workflows.report import png_bytes

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), dpi=80)
    for ax, t in zip(axes, SEARCHED, strict=True):
        cs = ax.contourf(grid_b, grid_a, res["per_tissue"][..., t], levels=15, cmap="viridis")
        fig.colorbar(cs, ax=ax, label="mean |% volume difference| (training pairs)")
        p, q = res["index"]
        ax.plot(grid_b[q], grid_a[p], "o", color="white", mec="k", ms=9,
                label="search (training)")
        for i, (bp, bq) in enumerate(black):
            ax.plot(grid_b[bq], grid_a[bp], "o", color="black", ms=5,
                    label="per test subject" if i == 0 else None)
        if truth is not None:
            ax.plot(truth[1], truth[0], "x", color="red", ms=9, mew=2, label="sidecars")
        ax.set_xlabel(labels[1])
        ax.set_ylabel(labels[0])
        ax.set_title(TISSUES[t])
    axes[0].legend(fontsize=7, loc="upper left")
    return png_bytes(fig)


def run_bridge(rows: list[dict], out_dir: Path, a: str, b: str, *, model_name: str,
               steps: int = 13, seed: int = 0, device: str = "cpu",
               classical: bool = True) -> BridgeResult:
    """The whole bridging analysis of the study table ``rows`` (see the module docs)."""
    from ..models.registry import load_model

    pairs = bridge_pairs(rows, a, b)
    model = load_model(model_name, device=device)
    if not model.physics:
        raise BridgeError(f"--bridge needs a model told the acquisition; {model_name} is not")
    seqs = (pairs[0][0]["sequence"], pairs[0][1]["sequence"])
    grids = [np.linspace(*BRIDGE_PARAMETERS[s][2], steps) for s in seqs]
    train, test = split_pairs(len(pairs), seed)
    n = len(pairs)
    sweeps = np.zeros((n, 2, steps, 3))
    truth = []
    t0 = time.time()
    for i, pair in enumerate(pairs):
        told = []
        for j, row in enumerate(pair):
            image, mask, voxel_ml = _template_images(out_dir, row["source"])
            params = json.loads(row["parameters"])
            key = BRIDGE_PARAMETERS[seqs[j]][0]
            told.append(params.get(key))
            sweeps[i, j] = sweep_volumes(model, image, mask, voxel_ml, seqs[j], params,
                                         grids[j], device=device)
            log.info("bridging sweep %d/%d: %s, %d values (%.0f s)", 2 * i + j + 1, 2 * n,
                     Path(row["source"]).name, steps, time.time() - t0)
        truth.append(told)
    res = search(sweeps[train, 0], sweeps[train, 1])
    p, q = res["index"]
    black = []
    for i in test:
        r = search(sweeps[i:i + 1, 0], sweeps[i:i + 1, 1])
        black.append(r["index"])
    processed = np.array([[[float(r[f"{t}_ml"]) for t in TISSUES] for r in pair]
                          for pair in pairs])
    clas = None
    if classical and all(r.get("GM_atropos_ml", "n/a") != "n/a" for pair in pairs for r in pair):
        clas = np.array([[[float(r[f"{t}_atropos_ml"]) for t in TISSUES] for r in pair]
                         for pair in pairs])
    bridged = np.stack([sweeps[:, 0, p], sweeps[:, 1, q]], axis=1)
    # the sidecars' pair, when every pair was told the same values: the truth to compare
    same = all(t == truth[0] for t in truth) and None not in truth[0]
    sidecar_pair = tuple(float(v) for v in truth[0]) if same else None
    names = [f"{BRIDGE_PARAMETERS[s][1]} of {g}" for s, g in zip(seqs, (a, b), strict=True)]
    fields = [BRIDGE_PARAMETERS[s][1] for s in seqs]
    chosen = (float(grids[0][p]), float(grids[1][q]))
    report = {
        "groups": {"A": a, "B": b}, "model": model_name,
        "sequences": {"A": seqs[0], "B": seqs[1]},
        "parameter": {"A": fields[0], "B": fields[1]},
        "grid": {"A": grids[0].tolist(), "B": grids[1].tolist()},
        "pairs": [{"participant_id": pa["participant_id"], "A": pa["source"],
                   "B": pb["source"], "subset": "train" if i in train else "test"}
                  for i, (pa, pb) in enumerate(pairs)],
        "chosen": {"A": chosen[0], "B": chosen[1],
                   "training_objective_pct": float(res["objective"][p, q])},
        "sidecars": None if sidecar_pair is None else {"A": sidecar_pair[0],
                                                        "B": sidecar_pair[1]},
        "per_test_subject": [{"participant_id": pairs[i][0]["participant_id"],
                              "A": float(grids[0][bp]), "B": float(grids[1][bq])}
                             for i, (bp, bq) in zip(test, black, strict=True)],
        "test_mean_abs_pct_difference": evaluate(train, test, processed=processed,
                                                 classical=clas, bridged=bridged),
        "objective_pct": res["objective"].tolist(),
        "seconds": time.time() - t0,
    }
    protocol = {"PhysBIDSProtocol": 1, "runs": [
        {"match": Path(r["source"]).name.split(".nii")[0], "fields": {fields[j]: chosen[j]}}
        for j, g in enumerate((a, b)) for r in rows if _in_group(r, g)]}
    figure = _plot(grids[0], grids[1], res, black, sidecar_pair, names)
    return BridgeResult(report, protocol, figure)
