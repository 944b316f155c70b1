"""Held-out evaluation material: whole-brain 1 mm phantoms of a head's labels and the
acquisition conditions of the papers' consistency experiments.

Shared by the benchmarks (``bench/``) and by ``training/calibrate_bounds.py``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import torch

from ..physics import SPACES, rician_noise
from ..physics.tissues import CLASSES, TARGET_OF_CLASS
from ..synth.generator import SynthConfig, SynthGenerator
from ..synth.gold_standard import physics_gold_standard

__all__ = ["BRAIN", "development_data", "conditions", "phantom", "noisy_image", "dice",
           "error_by_depth", "mixed_share", "model_benchmark_parser", "benchmark_models",
           "models_meta"]

BRAIN = [CLASSES.index(c) for c in ("gm_cortex", "gm_deep", "wm", "csf")]


def development_data() -> Path:
    """The development data: ``$PHYS_BIDS_DATA``, else ``shared/data`` beside the
    repository checkout (where the training, calibration and benchmark scripts look)."""
    return Path(os.environ.get("PHYS_BIDS_DATA",
                               Path(__file__).resolve().parents[3] / "shared" / "data"))


def aligned_label_maps() -> Path:
    """Where ``training/labels_to_mni.py`` puts the MNI-aligned label maps by default:
    ``$XDG_CACHE_HOME/phys-bids/label-maps-mni`` (``~/.cache/...``)."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "phys-bids" / "label-maps-mni"


def conditions(n: int, seed: int) -> dict[str, tuple[str, dict]]:
    """``{name: (sequence, {param: (n,) tensor})}``: MPRAGE TI evenly over the in- and
    out-of-distribution ranges, SPGR random draws of the two spaces (seeded).

    >>> c = conditions(3, 0)
    >>> sorted(c), [round(t, 3) for t in c["mprage-id"][1]["ti"].tolist()]
    (['mprage-id', 'mprage-ood', 'spgr-id', 'spgr-ood'], [0.6, 0.9, 1.2])
    """
    g = torch.Generator().manual_seed(seed)
    out = {
        "mprage-id": ("MPRAGE", {"ti": torch.linspace(0.6, 1.2, n)}),
        "mprage-ood": ("MPRAGE", {"ti": torch.linspace(0.1, 2.0, n)}),
    }
    for name in ("spgr-id", "spgr-ood"):
        out[name] = ("SPGR", SPACES[name].sample(n, generator=g, dtype=torch.float32))
    return out


def phantom(head, seed: int, margin: int = 6):
    """Class volume cropped to the brain (+margin, multiple of 8) and per-class maps.

    Returns ``(generator, class maps, fractions, present classes, brain mask, anatomy
    labels 0-3, physics gold standard labels)``.
    """
    cls = head.classes
    brain = np.isin(cls, BRAIN)
    idx = np.argwhere(brain)
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + margin + 1, cls.shape)
    size = [int(math.ceil((h - l) / 8) * 8) for l, h in zip(lo, hi, strict=True)]
    crop = np.zeros(size, np.uint8)
    sub = cls[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    crop[:sub.shape[0], :sub.shape[1], :sub.shape[2]] = sub
    lab = torch.from_numpy(crop).long()
    gen = SynthGenerator([head], SynthConfig())
    g = torch.Generator().manual_seed(seed)
    values = gen._tissue_values(g)
    present = sorted(int(k) for k in torch.unique(lab))
    cmaps = gen._class_maps(values, present, tuple(size), g)
    frac = torch.stack([(lab == k).float() for k in present])
    mask = torch.from_numpy(np.isin(crop, BRAIN))
    anatomy = torch.as_tensor(TARGET_OF_CLASS)[lab] * mask
    r1 = (cmaps["r1"] * frac).sum(0)
    pgs = physics_gold_standard(r1, mask).argmax(0)
    return gen, cmaps, frac, present, mask, anatomy, pgs


def noisy_image(gen, cmaps, frac, mask, sequence: str, params: dict, g: torch.Generator,
                snr: float = 30.0) -> torch.Tensor:
    """One skull-stripped magnitude image with Rician noise (SNR in the brain)."""
    sig = gen.simulate_patch(sequence, params, cmaps, frac)[0].abs()
    ref = float(sig[mask].mean())
    return rician_noise(sig, ref / snr, generator=g) * mask


def dice(a, b, k) -> float:
    """Dice overlap of label ``k`` between two label volumes (0 when neither has it)."""
    a, b = a == k, b == k
    return float(2 * (a & b).sum() / max(1, int(a.sum() + b.sum())))


def mixed_share(tissue: np.ndarray, mask: np.ndarray) -> float:
    """Share of the brain volume inside ``mask`` held in mixed voxels: those whose
    largest tissue fraction is below 90 % of the voxel's brain fraction (``tissue``:
    (T, ...) fractions of GM, WM, CSF).

    >>> tissue = np.array([[[1.0, 0.5, 0.95]], [[0.0, 0.5, 0.05]]])  # GM, WM; 3 voxels
    >>> mixed_share(tissue, np.ones((1, 3), bool))
    0.3333333333333333
    """
    brain = tissue.sum(0)
    return float(brain[mask & (tissue.max(0) < 0.9 * brain)].sum() / brain[mask].sum())


def error_by_depth(pred, truth, tissues=(1, 2, 3), max_depth: int = 4) -> dict:
    """Where a segmentation's errors lie inside each true tissue: ``{tissue: {depth:
    {"n": voxels, "wrong": voxels labelled otherwise}}}``. A voxel's depth is its
    Euclidean distance, in voxels and floored, to the nearest voxel of another true
    label (1: on the tissue's border); ``max_depth`` collects that deep and deeper.
    Thin cortex has only depths 1-2; depths >= 3 are the interiors of WM, deep GM
    nuclei and ventricles.

    >>> truth = np.zeros((1, 1, 9), int); truth[0, 0, 1:8] = 1
    >>> pred = truth.copy(); pred[0, 0, 4] = 2   # the centre, 4 voxels from the border
    >>> e = error_by_depth(pred, truth, tissues=(1,))[1]
    >>> [(d, e[d]["n"], e[d]["wrong"]) for d in sorted(e)]
    [(1, 2, 0), (2, 2, 0), (3, 2, 0), (4, 1, 1)]
    """
    from scipy import ndimage

    pred, truth = np.asarray(pred), np.asarray(truth)
    out = {}
    for k in tissues:
        inside = truth == k
        depth = np.minimum(np.floor(ndimage.distance_transform_edt(inside)), max_depth)
        wrong = pred != k
        out[k] = {}
        for d in range(1, max_depth + 1):
            at = inside & (depth == d)
            out[k][d] = {"n": int(at.sum()), "wrong": int((at & wrong).sum())}
    return out


def model_benchmark_parser(doc: str):
    """The arguments every model benchmark of ``bench/`` shares: ``--data`` (label
    maps), ``--models`` (names or folders, comma-separated), ``--subjects``,
    ``--threads`` and ``--seed`` (of the phantoms)."""
    import argparse

    ap = argparse.ArgumentParser(description=doc,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(development_data() / "label-maps"))
    ap.add_argument("--models", default="seg-physics,seg-baseline",
                    help="model names or folders, comma-separated ('' for none where a "
                         "benchmark has a method of its own: the consistency benchmark's "
                         "Atropos)")
    ap.add_argument("--subjects", default=None,
                    help="default: the test split of the first model's manifest "
                         f"(no model: {SPLIT_MODEL}'s)")
    ap.add_argument("--threads", type=int, default=2,
                    help="torch's threads, and ITK's for Atropos where a benchmark runs it")
    ap.add_argument("--seed", type=int, default=2024)
    return ap


#: the model whose split a benchmark without networks (``--models ''``) uses
SPLIT_MODEL = "seg-physics"


def benchmark_split(models: dict) -> dict:
    """The subject split a benchmark measures: the first model's, or with no model (a
    benchmark of the classical method alone) that of :data:`SPLIT_MODEL`'s manifest,
    read without loading its weights, so that its phantoms are those of a network run."""
    if models:
        return next(iter(models.values())).manifest["split"]
    from .registry import model_folder

    return json.loads((model_folder(SPLIT_MODEL) / "manifest.json").read_text())["split"]


def phantom_seed(subject: str, seed: int, test_split: list[str], listed: list[str]) -> int:
    """The seed of a benchmark subject's phantom: ``seed`` plus its place in the test
    split, so that ``--subjects head_15`` measures the images of head_15 in a full run;
    a subject outside the split, its place in ``listed`` (the run's ``--subjects``)."""
    return seed + (test_split.index(subject) if subject in test_split
                   else listed.index(subject))


def benchmark_models(args) -> tuple[dict, list[str]]:
    """``({name: loaded model}, subjects)`` for parsed :func:`model_benchmark_parser`
    arguments (``--models ''``: none); the subjects default to the test split of
    :func:`benchmark_split`. Sets torch's threads to ``--threads``."""
    from .registry import load_model

    torch.set_num_threads(args.threads)
    # the classical method's threads too (ANTs/ITK read this when first used)
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(args.threads)

    models = {m: load_model(m) for m in args.models.split(",") if m}
    subjects = args.subjects.split(",") if args.subjects else benchmark_split(models)["test"]
    return models, subjects


def models_meta(models: dict) -> dict:
    """What a benchmark's JSON records of each model: its steps and weights hash."""
    return {m: {"steps": model.manifest["steps"],
                "weights_sha256": model.manifest["weights_sha256"]}
            for m, model in models.items()}
