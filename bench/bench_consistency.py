#!/usr/bin/env python
"""Consistency benchmark: tissue volumes across acquisitions of the same anatomy.

For each held-out subject of the models' split: build a 1 mm qMRI phantom from its
labels (tissue priors, seeded smooth variation), simulate N images per condition

* ``mprage-id``:  static MPRAGE, TI evenly from 0.6 to 1.2 s (N=121: 5 ms steps)
* ``mprage-ood``: TI evenly from 0.1 to 2.0 s
* ``spgr-id`` / ``spgr-ood``: N random (TR, TE, FA) draws of the spaces (seeded)

skull-strip them with the brain mask, normalise, and segment each with (a) the
physics model, (b) the baseline, (c) Atropos k-means (antspyx), whose three clusters
are assigned to GM/WM/CSF by best overlap with the anatomy (an oracle assignment that
favours Atropos). Per tissue: coefficient of variation of the hard volume over the N
images (x10^3), Dice vs anatomy and vs the physics gold standard (R1-based), and the
volume error against the anatomy in % (signed mean over the images; for the networks
also of the *soft* volume, the sum of the probabilities, which the application reports).

    python bench/bench_consistency.py --n-images 121 --out docs/results/consistency

writes ``consistency.json`` (with every image's volumes and acquisition parameters
under ``curves``), ``consistency.md`` and, when MPRAGE is measured, ``volume_vs_ti.png``
(volume deviation from TI=0.9 s against TI, as the paper's figure 3). For SPGR, the
draws are also ranked by their WM-GM contrast (from the prior tissue means at 3 T, no
network) and the CoV is given without the lowest-contrast quarter and within it
(``by_contrast``): the low-flip-angle draws where WM and GM have nearly the same
intensity are where the networks' SPGR volumes move. ``by_contrast`` also holds each
contrast bin's deviation from the median (``bins``) and the CoV over the draws the
application would not flag (``cov_unflagged_x1e3``, contrast >= ``LOW_CONTRAST_SPGR``).

``--resume`` adds subjects to OUT's file and continues a subject that a stopped run
left unfinished at its next image (a run keeps each image's volumes in
``OUT/.partial-SUBJECT-CONDITION.json`` until the subject is written); ``--merge DIR``
takes the subjects another run measured, so that one-subject runs side by side (one
thread each) make one table:

    python bench/bench_consistency.py --subjects head_14 --out /tmp/a ...
    python bench/bench_consistency.py --subjects head_16 --out /tmp/b ...
    python bench/bench_consistency.py --subjects head_14,head_16 --merge /tmp/a --merge /tmp/b ...

A file may hold some of the methods only: ``--models ''`` measures Atropos alone (the
phantoms of the shipped seg-physics split), ``--no-atropos`` the networks alone, and a
run measures, per subject, the methods no resumed or merged file holds, so that
Atropos's CPU hours and the networks' (GPU) minutes can run apart and make one table.
Either option refuses a file measured with other images, seed, conditions or phantom
seeds, holding a method this run lacks or a network with other weights, or, where it
holds a network, measured with another window, flip TTA, physics clamp or device.
``--device cuda`` runs the networks on a GPU (the phantoms and images stay on the
CPU), which makes the 121-image out-of-distribution cells a matter of minutes rather
than hours.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch
from common import atropos_labels  # bench/, beside this script

from phys_bids.models.classical import ClassicalSegmentationError
from phys_bids.models.evaluation import (  # noqa: F401 - re-exported
    BRAIN,
    benchmark_models,
    benchmark_split,
    conditions,
    development_data,
    dice,
    model_benchmark_parser,
    models_meta,
    phantom,
    phantom_seed,
)
from phys_bids.models.inference import FLIP_TTA, sliding_window_logits
from phys_bids.physics.spaces import SPACES, TRAINING_SPACES
from phys_bids.physics.tissues import nearest_training_acquisition, wm_gm_contrast
from phys_bids.preproc.harmonise import REFERENCE, HarmonisationError, Harmoniser
from phys_bids.synth import load_head
from phys_bids.workflows.acquisition import LOW_CONTRAST_SPGR

log = logging.getLogger("bench.consistency")
TISSUES = {1: "GM", 2: "WM", 3: "CSF"}
#: WM-GM contrast bin edges of the SPGR deviation table (``contrast_bins``)
CONTRAST_EDGES = (0.0, 0.05, LOW_CONTRAST_SPGR, 0.15, 0.20)
METRICS = {"cov_x1e3": "CoV of volume (x10^3, lower is better)",
           "dice_anatomy": "Dice vs anatomy",
           "dice_pgs": "Dice vs physics gold standard",
           "volume_error_pct": "Volume error vs anatomy, % (hard labels)",
           "soft_volume_error_pct": "Volume error vs anatomy, % (soft: sum of probabilities)",
           "cov7_x1e3": "CoV of volume (x10^3) over the 7 of these images that a 7-image run "
                        "measures (MPRAGE, N = 6k + 1)"}


def told_acquisition(clamp: str, sequence: str, params: dict) -> dict:
    """What the physics branch is told of an acquisition under ``--physics-clamp``:
    ``none`` the acquisition itself, ``training`` each parameter clipped to the
    training space's range, ``contrast`` the training acquisition of nearest reference-
    tissue contrast at 3 T. Inside the training space all three tell the same."""
    if clamp == "training":
        return SPACES[TRAINING_SPACES[sequence]].clamp(params)
    if clamp == "contrast":
        return nearest_training_acquisition(sequence, params)
    return params


def harmoniser_for(sequence: str, params: dict) -> Harmoniser | None:
    """The transform ``--harmonise`` re-renders an image of this acquisition with, or
    None where its tissue curve cannot be inverted (phys_bids.preproc.harmonise) and the image
    is segmented as acquired."""
    try:
        return Harmoniser(sequence, {k: float(v.reshape(-1)[0]) for k, v in params.items()})
    except HarmonisationError:
        return None



def partial_path(out: Path, subj: str, cname: str) -> Path:
    """Where a run keeps the images it has measured of one subject and condition until
    the subject is written to ``consistency.json``, so that ``--resume`` continues an
    interrupted run at its next image rather than at the start of the subject."""
    return out / f".partial-{subj}-{cname}.json"


def save_partial(path: Path, key: dict, images: dict) -> None:
    """Write ``key`` (what the images were measured with) and ``images`` to ``path``
    whole or not at all (a run killed while writing leaves the previous file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({**key, **images}))
    os.replace(tmp, path)


def load_partial(path: Path, key: dict) -> dict:
    """The images an interrupted run measured, refused (SystemExit, nothing written)
    unless they were measured with ``key``: the same settings, phantom and methods."""
    part = json.loads(path.read_text())
    other = [k for k, v in key.items() if part.get(k) != v]
    if other:
        raise SystemExit(f"--resume: {path} holds images measured with other "
                         f"{', '.join(other)}; delete it or give another --out")
    return part


def main(argv=None):
    ap = model_benchmark_parser(__doc__)
    ap.add_argument("--n-images", type=int, default=121)
    ap.add_argument("--conditions", default="mprage-id,mprage-ood,spgr-id,spgr-ood")
    ap.add_argument("--no-atropos", action="store_true")
    ap.add_argument("--window", type=int, default=96)
    ap.add_argument("--flip-tta", choices=sorted(FLIP_TTA), default="none",
                    help="flip test-time augmentation of the networks: lr (2 passes), all (8)")
    ap.add_argument("--physics-clamp", choices=("none", "training", "contrast"),
                    default="none",
                    help="tell the physics branch an acquisition of its sequence's training "
                         "space instead of one it must extrapolate to (the image is simulated "
                         "as drawn): training = each parameter clipped to its range "
                         "(ParameterSpace.clamp), contrast = the training acquisition with "
                         "the nearest reference-tissue contrast at 3 T "
                         "(nearest_training_acquisition)")
    ap.add_argument("--harmonise", nargs="?", const="curve", default=False,
                    choices=("curve", "landmarks"),
                    help="re-render each image at the reference protocol (MPRAGE TI 0.9 s) by "
                         "the signal equation before segmenting it "
                         "(phys_bids.preproc.harmonise; every method), and tell the physics branch "
                         "that protocol; images whose "
                         "tissue curve cannot be inverted are segmented as acquired (counted "
                         "in the results: harmonised_share). 'curve' (the default, what the "
                         "application does, and what results without this setting measured) stops "
                         "at the tissue curve; 'landmarks' then moves the CSF/GM/WM peaks "
                         "onto the reference signals (Harmoniser.apply's opt-in step)")
    ap.add_argument("--device", default="cpu",
                    help="where the networks run (cpu, cuda; float32, no TF32): the phantoms "
                         "and images are made on the CPU either way, so a device changes only "
                         "the networks' rounding; recorded, and not mixed by --resume/--merge")
    ap.add_argument("--out", default="docs/results/consistency")
    ap.add_argument("--resume", action="store_true",
                    help="keep the subjects already in OUT/consistency.json and continue an "
                         "interrupted subject at its next image (same settings)")
    ap.add_argument("--merge", action="append", default=[], metavar="DIR",
                    help="take the subjects measured in DIR/consistency.json (same settings) "
                         "instead of measuring them, so that runs of one subject each, side "
                         "by side, make one table (repeatable)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    models, subjects = benchmark_models(args)
    dev = torch.device(args.device)
    if dev.type == "cuda":
        # full float32 as on the CPU: TF32 convolutions would round the logits to 10 bits
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    # a subject's phantom is seeded by its place in the test split, so that --subjects
    # head_15 measures the images of head_15 in a full run (others: their place in the list)
    test_split = benchmark_split(models).get("test", [])

    def seed_of(subj: str, listed: list[str] = subjects) -> int:
        return phantom_seed(subj, args.seed, test_split, listed)
    methods = list(models) + ([] if args.no_atropos else ["atropos"])
    if not methods:
        raise SystemExit("nothing to measure: --models '' with --no-atropos")
    conds = {k: v for k, v in conditions(args.n_images, args.seed).items()
             if k in args.conditions.split(",")}
    out = Path(args.out)
    results = {m: {c: [] for c in conds} for m in methods}
    curves: dict = {}
    failures: list = []
    restarts: list = []  # the images whose k-means Atropos started again (centres)
    # the subjects each method has: a merged file may hold some of the methods only
    done: dict[str, set] = {m: set() for m in methods}
    # a subject measured under other settings would be averaged with these: a file is
    # resumed or merged only when all of them agree
    now = {"n_images": args.n_images, "window": args.window, "seed": args.seed,
           "flip_tta": args.flip_tta, "physics_clamp": args.physics_clamp,
           "harmonise": args.harmonise, "device": dev.type, "conditions": ",".join(conds),
           "methods": ",".join(methods), "models": models_meta(models)}
    sources = ([out] if args.resume and (out / "consistency.json").exists() else []) + [
        Path(d) for d in args.merge]
    wall = 0.0
    for src in sources:
        prev = earlier_run(src / "consistency.json", now, "--resume" if src == out else "--merge")
        held = [m for m in methods if m in prev["per_subject"]]
        new = {m: [s for s in prev["meta"]["subjects"] if s not in done[m]] for m in held}
        stray = [s for s in prev["meta"]["subjects"] if s not in subjects]
        if stray:
            raise SystemExit(f"{src / 'consistency.json'} holds {', '.join(stray)}, not in "
                             "--subjects; add them to --subjects or give another --out")
        # the same phantom: a subject outside the test split is seeded by its place in
        # --subjects (files from before the seed was recorded: by its place in the file)
        for r in (r for m in held for rows in prev["per_subject"][m].values()
                  for r in rows if r["subject"] in new[m]):
            was = r.get("phantom_seed", seed_of(r["subject"], prev["meta"]["subjects"]))
            if was != seed_of(r["subject"]):
                raise SystemExit(
                    f"{src / 'consistency.json'}: the phantom of {r['subject']} was seeded "
                    f"{was}, this run's is {seed_of(r['subject'])} (outside the test split a "
                    "subject is seeded by its place in --subjects); give them in that order")
        for m in held:
            for c in conds:
                results[m][c] += [r for r in prev["per_subject"][m][c]
                                  if r["subject"] in new[m]]
                got = [r for r in prev["curves"].get(m, {}).get(c, [])
                       if r["subject"] in new[m]]
                if got:
                    curves.setdefault(m, {}).setdefault(c, []).extend(got)
            done[m].update(new[m])
        if "atropos" in held:
            failures += [f for f in prev["meta"].get("atropos_failures", [])
                         if f["subject"] in new["atropos"]]
            restarts += [f for f in prev["meta"].get("atropos_restarts", [])
                         if f["subject"] in new["atropos"]]
        wall += prev["meta"].get("wall_s", 0.0)
        taken = [s for s in prev["meta"]["subjects"] if any(s in new[m] for m in held)]
        log.info("%s: %s already measured%s", src, ", ".join(taken) or "no new subject",
                 "" if held == methods else f" ({', '.join(held)})")
    # what an interrupted run of the same settings measured of a subject it had not
    # finished, image by image (Atropos takes about a minute per image on one thread)
    settings = json.loads(json.dumps(now))

    def partial_key(subj: str, todo: list[str]) -> dict:
        """What a subject's saved images must have been measured with to be continued."""
        return {"settings": settings, "phantom_seed": seed_of(subj), "methods": todo}
    partial: dict = {}
    for subj in subjects:
        todo = [m for m in methods if subj not in done[m]]
        for cname in conds:
            path = partial_path(out, subj, cname)
            if todo and path.exists():
                if not args.resume:
                    log.info("%s: an interrupted run's images, measured again (--resume "
                             "continues them)", path)
                    continue
                partial[subj, cname] = load_partial(path, partial_key(subj, todo))
    out.mkdir(parents=True, exist_ok=True)  # after the checks: a refusal writes nothing
    if any(s not in done[m] for m in models for s in subjects):  # a merge runs no network
        for mod in models.values():
            mod.network.to(dev)
    # wall_s sums the runs that measured the file's subjects
    t0 = time.time() - wall
    for subj in subjects:
        # the methods no earlier file measured on this subject
        todo = [m for m in methods if subj not in done[m]]
        if not todo:
            continue
        head = load_head(Path(args.data) / f"{subj}.nii.gz")
        gen, cmaps, frac, present, mask, anatomy, pgs = phantom(head, seed_of(subj))
        # the networks' labels are counted where the networks ran (Atropos: on the CPU)
        on_dev = {"mask": mask.to(dev), "anatomy": anatomy.to(dev), "pgs": pgs.to(dev)}
        on_cpu = {"mask": mask, "anatomy": anatomy, "pgs": pgs}
        for cname, (seq, params) in conds.items():
            n = next(iter(params.values())).shape[0]
            vols = {m: [] for m in todo}
            soft = {m: [] for m in todo}
            dices = {m: [] for m in todo}
            key = partial_key(subj, todo)
            path = partial_path(out, subj, cname)
            first_restart, first_failure = len(restarts), len(failures)
            part = partial.get((subj, cname), {"wall_s": 0.0})
            if "vols" in part:
                vols, soft, dices = part["vols"], part["soft"], part["dices"]
                restarts += part["restarts"]
                failures += part["failures"]
                log.info("%s %s: %d of %d images already measured (%s)", subj, cname,
                         len(vols[todo[0]]), n, path.name)
            # one transform per image, for its re-rendering and its flag in the curves
            harmonisers = [harmoniser_for(seq, {k: v[i:i + 1] for k, v in params.items()})
                           if args.harmonise else None for i in range(n)]
            t_cond = time.time() - part["wall_s"]
            t0 -= part["wall_s"]
            for i in range(len(vols[todo[0]]), n):
                p = {k: v[i:i + 1] for k, v in params.items()}
                sig = gen.simulate_patch(seq, p, cmaps, frac)[0].abs()
                img = sig * mask
                img = img / img[mask].mean()
                told_seq, told = seq, told_acquisition(args.physics_clamp, seq, p)
                if harmonisers[i] is not None:
                    img, _ = harmonisers[i].apply(img, mask,
                                                  landmarks=args.harmonise == "landmarks")
                    img = img / img[mask].mean()
                    told_seq = REFERENCE[0]
                    told = {k: torch.tensor([v]) for k, v in REFERENCE[1].items()}
                for m in todo:
                    ref = on_cpu if m == "atropos" else on_dev
                    if m == "atropos":
                        try:
                            centres: list = []
                            lab = atropos_labels(img, mask, anatomy, centres)
                            if centres:
                                restarts.append({"subject": subj, "condition": cname,
                                                 "image": i, "centres": centres[0]})
                        except ClassicalSegmentationError as err:
                            # counted as a failure, left out of the statistics
                            log.warning("%s %s %d: %s", subj, cname, i, err)
                            failures.append({"subject": subj, "condition": cname,
                                             "image": i})
                            vols[m].append([np.nan] * 3)
                            dices[m].append([np.nan] * 6)
                            continue
                    else:
                        mod = models[m]
                        phys = (mod.encoder.encode(told_seq, told, device=dev) if mod.physics
                                else None)
                        logits = sliding_window_logits(mod.network, img[None, None].to(dev),
                                                       phys, window=args.window, overlap=0.25,
                                                       flip_axes=FLIP_TTA[args.flip_tta])
                        lab = logits[0].argmax(0) * ref["mask"]
                        prob = torch.softmax(logits[0], 0) * ref["mask"]
                        soft[m].append([float(prob[k].sum()) for k in (1, 2, 3)])
                    vols[m].append([int((lab == k).sum()) for k in (1, 2, 3)])
                    dices[m].append([dice(lab, ref["anatomy"], k) for k in (1, 2, 3)]
                                    + [dice(lab, ref["pgs"], k) for k in (1, 2, 3)])
                save_partial(path, key, {"vols": vols, "soft": soft, "dices": dices,
                                         "restarts": restarts[first_restart:],
                                         "failures": failures[first_failure:],
                                         "wall_s": time.time() - t_cond})
                log.info("%s %s %d/%d (%.0f s)", subj, cname, i + 1, n, time.time() - t0)
            truth = np.array([float((anatomy == k).sum()) for k in (1, 2, 3)])
            for m in todo:
                v = np.array(vols[m], dtype=np.float64)
                results[m][cname].append({**subject_row(subj, v, np.array(dices[m]), soft[m],
                                                        truth, seven_of(cname, n)),
                                          "phantom_seed": seed_of(subj)})
                # every image's volumes with its acquisition parameters (MPRAGE: the TI
                # curve of the plot; SPGR: which draws of TR, TE and flip angle move them)
                curves.setdefault(m, {}).setdefault(cname, []).append(
                    {**{k: t.tolist() for k, t in params.items()}, "volumes": v.tolist(),
                     "subject": subj, **({"harmonised": [h is not None for h in harmonisers]}
                                         if args.harmonise else {})})
        # partial results after every subject: a long background run stopped early still
        # leaves the subjects it finished
        for m in todo:
            done[m].add(subj)
        write_results(out, results, curves, models, args,
                      [s for s in subjects if all(s in done[m] for m in methods)],
                      t0, final=False, failures=failures, restarts=restarts)
        for cname in conds:  # the subject is in consistency.json now
            partial_path(out, subj, cname).unlink(missing_ok=True)
    print(write_results(out, results, curves, models, args, subjects, t0, final=True,
                        failures=failures, restarts=restarts))


def seven_of(cname: str, n: int) -> np.ndarray | None:
    """Indices of the images that a 7-image run (same seed) measures among the N of this
    run: MPRAGE TIs are evenly spaced, so with N = 6k + 1 > 7 every k-th TI is one of
    the 7. None otherwise, SPGR included (its draws of TR, TE and flip angle come in
    blocks of N from one seeded stream, so a 7-image run's draws are not among them)."""
    if n <= 7 or not cname.startswith("mprage") or (n - 1) % 6:
        return None
    return np.arange(0, n, (n - 1) // 6)


def per_tissue(x) -> dict:
    """``{"GM": .., "WM": .., "CSF": ..}`` from three values (None: three nulls)."""
    return dict(zip(TISSUES.values(), (x.tolist() if x is not None else [None] * 3),
                    strict=True))


def cov_x1e3(v: np.ndarray) -> np.ndarray:
    """Coefficient of variation x10^3 of each column of ``v`` (images x tissues)."""
    return 1e3 * v.std(0) / v.mean(0)


def subject_row(subj: str, v: np.ndarray, d: np.ndarray, soft: list, truth: np.ndarray,
                seven: np.ndarray | None = None) -> dict:
    """One subject's metrics for one method and condition from its per-image volumes ``v``
    (images x 3 voxels, NaN where Atropos failed), Dice values ``d`` (images x 6: anatomy,
    then gold standard) and soft volumes. Failed images are left out; where every image
    failed, each metric is null, so that the JSON holds no NaN and the summary over
    subjects averages the subjects that have one. ``seven`` (:func:`seven_of`) adds the
    CoV over the images a 7-image run measures, so that one run says how far the
    documented 7-image tables are from the N-image CoV."""
    ok = np.isfinite(v[:, 0])
    row: dict = {"subject": subj, "images": int(ok.sum())}
    v_all = v
    v, d = v[ok], d[ok].astype(np.float64)
    have = bool(ok.any())
    row["volume_error_pct"] = per_tissue(100 * (v.mean(0) - truth) / truth if have else None)
    if soft:
        row["soft_volume_error_pct"] = per_tissue(100 * (np.mean(soft, 0) - truth) / truth)
    row["cov_x1e3"] = per_tissue(cov_x1e3(v) if have else None)
    if seven is not None:
        sub = ok[seven]
        v7 = v_all[seven][sub]
        row["cov7_x1e3"] = per_tissue(cov_x1e3(v7) if sub.any() else None)
    row["dice_anatomy"] = per_tissue(d[:, :3].mean(0) if have else None)
    row["dice_pgs"] = per_tissue(d[:, 3:].mean(0) if have else None)
    return row


def conditions_of(results: dict) -> str:
    """The conditions a results file measures, as ``--conditions`` names them."""
    return ",".join(next(iter(results.values())))


#: the settings that change what a network measures and nothing of Atropos's
NETWORK_SETTINGS = ("window", "flip_tta", "physics_clamp", "device")


def earlier_run(path: Path, now: dict, option: str) -> dict:
    """The results file ``path`` of an earlier run, refused (SystemExit naming the
    differing settings, nothing written) unless it was measured with the settings
    ``now``: the same images, seed and conditions and, where it holds a network, the
    same window, flip TTA, physics clamp and device. It may hold some of the methods
    only (a run of Atropos alone, ``--models ''``, or of the networks alone), not one
    this run lacks, and a network it holds must have the same weights. Files from
    before a setting was recorded: flip TTA and the clamp were off, the networks ran
    on the CPU, and the conditions and methods are those the per-subject results hold."""
    if not path.exists():
        raise SystemExit(f"{option}: {path} does not exist")
    prev = json.loads(path.read_text())
    results = prev["per_subject"]
    missing = {"flip_tta": "none", "physics_clamp": "none", "harmonise": False,
               "device": "cpu",
               "conditions": conditions_of(results), "methods": ",".join(results)}
    other = {k: prev["meta"].get(k, missing.get(k, v)) for k, v in now.items()}
    if other["harmonise"] is True:  # results from before the landmark step: the curve alone
        other["harmonise"] = "curve"
    theirs, ours = other["methods"].split(","), now["methods"].split(",")
    networks = [m for m in theirs if m != "atropos"]

    def differs(k):
        if k == "methods":
            return any(m not in ours for m in theirs)
        if k == "models":
            return any(other[k].get(m) != now[k].get(m) for m in networks)
        return other[k] != now[k] and (bool(networks) or k not in NETWORK_SETTINGS)
    if any(differs(k) for k in now):
        def show(k):
            if k != "models":
                return f"{k} {other[k]}"
            return "models " + ", ".join(
                f"{m} ({d['steps']} steps, weights {d['weights_sha256'][:8]})"
                for m, d in other[k].items())
        raise SystemExit(f"{option}: {path} was measured with "
                         + ", ".join(show(k) for k in now if differs(k))
                         + "; run with those settings or give another --out")
    return prev


def write_results(out, results, curves, models, args, subjects, t0, *, final: bool,
                  failures: list, restarts: list) -> str:
    """Write consistency.json/.md (and the TI plot); returns the markdown. Rows come in
    the order of ``subjects`` whichever run (resumed, merged, new) measured them."""
    def ordered(rows):  # a partial file holds the subjects that every method measured
        return sorted((r for r in rows if r["subject"] in subjects),
                      key=lambda r: subjects.index(r["subject"]))

    results = {m: {c: ordered(rows) for c, rows in per.items()} for m, per in results.items()}
    curves = {m: {c: ordered(rows) for c, rows in per.items()} for m, per in curves.items()}
    summary = summarise(results)
    meta = {"n_images": args.n_images, "subjects": subjects, "complete": final,
            "window": args.window, "flip_tta": args.flip_tta,
            "physics_clamp": args.physics_clamp, "harmonise": args.harmonise,
            "harmonised_share": harmonised_share(curves),
            "device": torch.device(args.device).type,
            "conditions": conditions_of(results),
            "seed": args.seed, "models": models_meta(models),
            "atropos": "k-means 3 classes, 5 iterations, constant seed, restarted from the "
                       "brain's 10/50/90 % intensities where the default start leaves a "
                       "class empty; clusters assigned to tissues by best overlap with the "
                       "anatomy (oracle)",
            "atropos_failures": [f for f in failures if f["subject"] in subjects],
            "atropos_restarts": [f for f in restarts if f["subject"] in subjects],
            "images": "noise-free, skull-stripped with the anatomical brain mask, divided by the "
                      "mean in the mask", "wall_s": time.time() - t0}
    by_contrast = contrast_split(curves)
    doc = {"meta": meta, "summary": summary, "by_contrast": by_contrast,
           "per_subject": results, "curves": curves}
    (out / "consistency.json").write_text(json.dumps(_nan_to_null(doc), indent=1,
                                                     allow_nan=False))
    md = markdown(summary, meta) + contrast_markdown(by_contrast)
    (out / "consistency.md").write_text(md)
    plot(curves, out / "volume_vs_ti.png")
    return md


def harmonised_share(curves: dict) -> dict:
    """Per condition, the share of the images ``--harmonise`` re-rendered (the rest were
    segmented as acquired); empty without it."""
    out = {}
    for per in curves.values():
        for c, rows in per.items():
            flags = [f for r in rows for f in r.get("harmonised", [])]
            if flags:
                out[c] = round(sum(flags) / len(flags), 4)
    return out


def contrast_split(curves: dict, share: float = 0.25) -> dict:
    """Per method, SPGR condition and subject: the CoV (x10^3) over all draws, without
    the ``share`` of draws with the lowest WM-GM contrast, and within that share, with
    the contrast range of the share; over the draws at or above the application's
    low-contrast flag (``cov_unflagged_x1e3``); and the deviation by contrast bin.
    Failed images (NaN volumes) are left out, and a method with fewer than two images
    left has no row."""
    out: dict = {}
    for m, per in curves.items():
        for cname, rows in per.items():
            if not cname.startswith("spgr"):
                continue
            for row in rows:
                c = wm_gm_contrast("SPGR", {k: row[k] for k in ("tr", "te", "fa")})
                v = np.array(row["volumes"], dtype=np.float64)
                ok = np.isfinite(v[:, 0])
                c, v = c[ok], v[ok]
                if len(c) < 2:
                    continue  # nothing to split (Atropos failed on the images)
                low = np.argsort(c)[:int(np.ceil(share * len(c)))]
                rest = np.setdiff1d(np.arange(len(c)), low)
                kept = c >= LOW_CONTRAST_SPGR  # the draws the application would not flag
                out.setdefault(m, {}).setdefault(cname, {})[row["subject"]] = {
                    "images": int(len(c)), "share": share,
                    "low_contrast_range": [float(c[low].min()), float(c[low].max())],
                    "cov_x1e3": per_tissue(cov_x1e3(v)),
                    "cov_without_low_x1e3": per_tissue(cov_x1e3(v[rest])),
                    "cov_low_x1e3": per_tissue(cov_x1e3(v[low])),
                    "unflagged": int(kept.sum()),
                    "cov_unflagged_x1e3": per_tissue(cov_x1e3(v[kept])
                                                     if kept.sum() >= 2 else None),
                    "bins": contrast_bins(c, v)}
    return out


def contrast_bins(c: np.ndarray, v: np.ndarray) -> list[dict]:
    """The draws' volume deviation from their median (%, per tissue) in bins of WM-GM
    contrast ``c`` (edges :data:`CONTRAST_EDGES`; empty bins left out): the evidence for
    the application's low-contrast flag (``LOW_CONTRAST_SPGR``, one of the edges)."""
    dev = 100 * (v / np.median(v, 0) - 1)
    edges = [-np.inf, *CONTRAST_EDGES, np.inf]
    bins = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        k = (c >= lo) & (c < hi)
        if k.any():
            bins.append({"contrast": [None if np.isinf(lo) else lo, None if np.isinf(hi) else hi],
                         "images": int(k.sum()),
                         "max_abs_dev_pct": per_tissue(np.abs(dev[k]).max(0)),
                         "mean_dev_pct": per_tissue(dev[k].mean(0))})
    return bins


def contrast_markdown(by_contrast: dict) -> str:
    if not by_contrast:
        return ""
    lines = ["", "### SPGR CoV (x10^3) by WM-GM contrast of the draw", "",
             "The draws ranked by (WM - GM) / GM from the prior tissue means at 3 T; "
             "'low' is the lowest-contrast quarter.", "",
             "| method | condition | subject | low-quarter contrast | all GM / WM / CSF | "
             "without low | low only | draws not flagged (contrast >= "
             f"{LOW_CONTRAST_SPGR:+.2f}) | their CoV |", "|---" * 9 + "|"]

    def f(d):
        return " / ".join("n/a" if d[t] is None else f"{d[t]:.1f}" for t in TISSUES.values())

    for m, per in by_contrast.items():
        for cname, subs in per.items():
            for subj, r in subs.items():
                lo, hi = r["low_contrast_range"]
                lines.append(f"| {m} | {cname} | {subj} | {lo:+.3f} to {hi:+.3f} | "
                             f"{f(r['cov_x1e3'])} | {f(r['cov_without_low_x1e3'])} | "
                             f"{f(r['cov_low_x1e3'])} | {r['unflagged']} | "
                             f"{f(r['cov_unflagged_x1e3'])} |")
    lines += ["", "### SPGR volume deviation from the median (%) by WM-GM contrast", "",
              f"The application flags SPGR protocols below {LOW_CONTRAST_SPGR:+.2f}.", "",
              "| method | condition | subject | contrast | draws | max abs GM / WM / CSF | "
              "mean GM / WM / CSF |", "|---" * 7 + "|"]
    for m, per in by_contrast.items():
        for cname, subs in per.items():
            for subj, r in subs.items():
                for b in r["bins"]:
                    lo, hi = b["contrast"]
                    span = (f"< {hi:+.2f}" if lo is None else f">= {lo:+.2f}" if hi is None
                            else f"{lo:+.2f} to {hi:+.2f}")
                    lines.append(f"| {m} | {cname} | {subj} | {span} | {b['images']} | "
                                 f"{f(b['max_abs_dev_pct'])} | {f(b['mean_dev_pct'])} |")
    return "\n".join(lines + [""])


def _nan_to_null(x):
    """``x`` with every float NaN (a failed Atropos image's volumes) as None: JSON has no
    NaN."""
    if isinstance(x, float) and np.isnan(x):
        return None
    if isinstance(x, list):
        return [_nan_to_null(i) for i in x]
    if isinstance(x, dict):
        return {k: _nan_to_null(v) for k, v in x.items()}
    return x


def summarise(results):
    summary = {}
    for m, per in results.items():
        summary[m] = {}
        for c, rows in per.items():
            if not rows:
                continue
            entry = {}
            for metric in METRICS:
                have = [r for r in rows if metric in r]  # older runs lack the errors
                if len(have) < len(rows):
                    continue
                entry[metric] = {}
                for t in TISSUES.values():
                    x = [r[metric][t] for r in have if r[metric][t] is not None]
                    entry[metric][t] = ((float(np.mean(x)), float(np.std(x))) if x
                                        else (None, None))  # every image failed
            summary[m][c] = entry
    return summary


def markdown(summary, meta) -> str:
    lines = [f"Subjects: {', '.join(meta['subjects'])}; {meta['n_images']} images per "
             f"condition; mean +- SD over subjects"
             + ("" if meta.get("flip_tta", "none") == "none"
                else f"; networks with flip TTA ({meta['flip_tta']})")
             + {"none": "", "training": "; physics branch told the acquisition clipped to "
                                        "the training space",
                "contrast": "; physics branch told the training acquisition of nearest "
                            "reference-tissue contrast"}[meta.get("physics_clamp", "none")]
             + ("" if meta.get("device", "cpu") == "cpu"
                else f"; networks on {meta['device']}")
             + ("" if not meta.get("harmonise") else
                "; images re-rendered at MPRAGE TI 0.9 s by the signal equation"
                + (", class peaks moved onto the reference signals"
                   if meta["harmonise"] == "landmarks" else "")
                + " (--harmonise; "
                "share re-rendered per condition: " + ", ".join(
                    f"{c} {100 * v:.0f} %" for c, v in meta.get("harmonised_share", {}).items())
                + ")")
             + ".", ""]
    if meta.get("atropos_failures"):
        lines += [f"Atropos failed on {len(meta['atropos_failures'])} image(s) (left out of "
                  "its statistics): " + ", ".join(f"{f['subject']} {f['condition']} #{f['image']}"
                                                  for f in meta["atropos_failures"]), ""]
    if meta.get("atropos_restarts"):
        lines += [f"Atropos's k-means left a class empty and was started again from the "
                  f"brain's 10/50/90 % intensities on {len(meta['atropos_restarts'])} "
                  "image(s): " + ", ".join(f"{f['subject']} {f['condition']} #{f['image']}"
                                           for f in meta["atropos_restarts"]), ""]
    for metric, title in METRICS.items():
        conds = sorted({c for m in summary.values() for c in m})
        if not any(metric in per[c] for per in summary.values() for c in per):
            continue
        lines += [f"### {title}", "",
                  "| method | " + " | ".join(f"{c} {t}" for c in conds for t in TISSUES.values())
                  + " |", "|---" * (1 + len(conds) * 3) + "|"]
        for m, per in summary.items():
            cells = []
            if not all(metric in per[c] for c in conds):
                continue  # atropos has no soft volume
            for c in conds:
                for t in TISSUES.values():
                    mu, sd = per[c][metric][t]
                    cells.append("n/a" if mu is None else f"{mu:.3f}" if metric.startswith("dice")
                                 else f"{mu:.2f} +- {sd:.2f}")
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(curves, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    mprage = {m: {c: rows for c, rows in per.items() if c.startswith("mprage")}
              for m, per in curves.items()}
    if not any(mprage.values()):
        return  # an SPGR-only run has no TI axis
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (k, name) in zip(axes, ((2, "WM"), (1, "GM")), strict=True):
        for m, per in mprage.items():
            for cname, rows in per.items():
                row = rows[0]
                ti = np.array(row["ti"])
                v = np.array(row["volumes"], dtype=np.float64)[:, k - 1]
                ref = v[np.argmin(np.abs(ti - 0.9))]
                ax.plot(ti, 100 * (v - ref) / ref, label=f"{m} ({cname})",
                        ls="-" if cname.endswith("id") else ":")
        ax.axvspan(0.6, 1.2, color="0.9")
        ax.set_xlabel("TI (s)")
        ax.set_ylabel(f"{name} volume change from TI=0.9 s (%)")
        ax.set_title(f"{name}, subject {rows[0]['subject']}")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)  # a long benchmark or a test writes many; pyplot keeps each open


if __name__ == "__main__":
    main()
