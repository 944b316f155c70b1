#!/usr/bin/env python
"""Train a phys-bids segmentation model from the head label maps (CPU or GPU).

Reproduce the shipped models (each command resumes from the checkpoint in --out,
so a longer schedule continues from the committed one):

    python training/train_segmentation.py --config training/configs/seg-physics.json \
        --out phys_bids/data/models/seg-physics
    python training/train_segmentation.py --config training/configs/seg-baseline.json \
        --out phys_bids/data/models/seg-baseline

--data defaults to $PHYS_BIDS_DATA/label-maps or ../shared/data/label-maps.

A config with "aligned_from_step" (the shipped segmentation models: 2250 steps on
the label maps in their own space, then 450 on the maps rigidly aligned to MNI, the
space the application segments in) needs the aligned maps: --aligned-data names
their folder, and when it lacks a subject this command makes them first with
training/labels_to_mni.py (about 1 min per head). Default folder:
$XDG_CACHE_HOME/phys-bids/label-maps-mni (~/.cache/...).

--init-from continues a committed model in a new folder (a fine-tuning arm): its
checkpoint (weights, optimiser, step, RNG states, history) starts the run, and the
manifest records which model and weights it came from. The fine-tuning arms of
docs/segmentation.md started from the step-2250 checkpoint of seg-physics, e.g.:

    python training/labels_to_mni.py --out /tmp/label-maps-mni
    python training/train_segmentation.py --config training/configs/seg-physics-mni.json \
        --init-from <a seg-physics folder at step 2250> --data /tmp/label-maps-mni \
        --out /tmp/arm-mni
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from phys_bids.models.evaluation import aligned_label_maps, development_data
from phys_bids.models.training import TrainConfig, needs_aligned, train


def ensure_aligned(cfg: TrainConfig, data: str, aligned: Path, threads: int) -> None:
    """Make the MNI-aligned label maps the config needs unless they are there, made
    the way the shipped models' were (one registration thread: labels_to_mni.py)."""
    import labels_to_mni  # training/, beside this script

    log = logging.getLogger("phys_bids.train")
    subjects = (*cfg.train_subjects, *cfg.val_subjects)
    if all((aligned / f"{s}.nii.gz").exists() for s in subjects):
        made = aligned / "manifest.json"
        if made.is_file() and json.loads(made.read_text()).get(
                "registration_threads") == labels_to_mni.REGISTRATION_THREADS:
            return
        log.warning("%s: the aligned label maps there were not made with %d registration "
                    "thread(s), so their sha256 may differ from the shipped manifests'; "
                    "making them again", aligned, labels_to_mni.REGISTRATION_THREADS)
    log.info("aligning the label maps to MNI into %s (training/labels_to_mni.py)", aligned)
    rc = labels_to_mni.main(["--data", data, "--out", str(aligned),
                             "--threads", str(threads)])
    if rc:
        raise SystemExit(rc)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="training configuration JSON")
    ap.add_argument("--out", required=True, help="output folder (weights, checkpoint, manifest)")
    ap.add_argument("--data", default=None, help="folder with head_XX.nii.gz label maps")
    ap.add_argument("--max-steps", type=int, default=None, help="override the schedule length")
    ap.add_argument("--time-limit-min", type=float, default=None,
                    help="stop (and checkpoint) after this many minutes")
    ap.add_argument("--threads", type=int, default=None, help="torch threads")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    ap.add_argument("--init-from", default=None,
                    help="start from this model's checkpoint (a shipped model name or a "
                         "model folder) when --out has none")
    ap.add_argument("--aligned-data", default=None,
                    help="folder of the MNI-aligned label maps for a config with "
                         "aligned_from_step (made when missing; default "
                         "$XDG_CACHE_HOME/phys-bids/label-maps-mni)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        cfg = TrainConfig.from_json(args.config)
    except (OSError, ValueError, TypeError) as err:
        # one line naming the file; nothing has been written yet
        raise SystemExit(f"{args.config}: {err}") from None
    if args.max_steps is not None:
        cfg.max_steps = args.max_steps
    if args.time_limit_min is not None:
        cfg.time_limit_min = args.time_limit_min
    if args.threads is not None:
        cfg.threads = args.threads
    data = args.data or str(development_data() / "label-maps")
    aligned = None
    if needs_aligned(cfg):
        aligned = Path(args.aligned_data) if args.aligned_data else aligned_label_maps()
        ensure_aligned(cfg, data, aligned, max(1, cfg.threads))
    manifest = train(cfg, data, args.out, resume=not args.no_resume, device=args.device,
                     init_from=args.init_from, aligned_dir=aligned)
    print(f"{cfg.name}: {manifest['steps']} steps, weights sha256 {manifest['weights_sha256']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
