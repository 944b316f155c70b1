#!/usr/bin/env python
"""The whole participant pipeline on a 1 mm whole head: wall time, per-step times and
peak memory.

Colin27 (1 mm, 181x217x181, a real T1-weighted MRI with skull) is put in a one-subject
BIDS dataset with an MPRAGE sidecar (TI 0.9 s) and run through ``phys-bids ...
participant`` as a user would: skull strip, N4, rigid registration, segmentation
with ``--mc-samples`` Monte-Carlo samples, qMRI maps, harmonised image, outputs and
report. Time = the command's wall clock (process start to exit, cold cache);
memory = the peak RSS of the process and its children (``/usr/bin/time``-style,
from ``resource.getrusage``); per-step times from the run's ``logs/run-*/steps.tsv``.

    python bench/bench_participant.py --omp-nthreads 2 --mc-samples 4 \
        --json docs/results/participant_bench.json
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from phys_bids.models.evaluation import development_data

DATA = development_data()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--omp-nthreads", type=int, default=2)
    ap.add_argument("--mc-samples", type=int, default=4)
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    head = DATA / "heads" / "colin27_T1w.nii.gz"
    if not head.exists():
        raise SystemExit(f"{head} not found (set PHYS_BIDS_DATA)")
    tmp = Path(tempfile.mkdtemp(prefix="phys-bids-bench-"))
    bids = tmp / "bids"
    anat = bids / "sub-colin" / "anat"
    anat.mkdir(parents=True)
    shutil.copy(head, anat / "sub-colin_T1w.nii.gz")
    (anat / "sub-colin_T1w.json").write_text(json.dumps({
        "Manufacturer": "Siemens", "MagneticFieldStrength": 3, "ScanningSequence": "GR\\IR",
        "SequenceVariant": "SK\\SP\\MP", "RepetitionTime": 2.3, "InversionTime": 0.9,
        "FlipAngle": 9, "EchoTime": 0.0029}))
    (bids / "dataset_description.json").write_text(json.dumps(
        {"Name": "colin27", "BIDSVersion": "1.9.0"}))
    (bids / "participants.tsv").write_text("participant_id\nsub-colin\n")
    cmd = [sys.executable, "-m", "phys_bids", str(bids), str(tmp / "out"), "participant",
           "-w", str(tmp / "work"), "--omp-nthreads", str(args.omp_nthreads),
           "--nprocs", str(args.omp_nthreads), "--mc-samples", str(args.mc_samples),
           "--skip-bids-validation"]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    if r.returncode != 0:
        print(r.stderr[-3000:])
        raise SystemExit(f"phys-bids failed with exit status {r.returncode}")
    steps_tsv = next((tmp / "out" / "logs").glob("run-*/steps.tsv"))
    steps = [{"step": row["step"], "seconds": float(row["seconds"]),
              "peak_rss_mb": float(row["peak_rss_mb"])}
             for row in csv.DictReader(steps_tsv.open(), delimiter="\t")]
    res = {"input": "Colin27 1 mm whole head (181x217x181)", "omp_nthreads": args.omp_nthreads,
           "mc_samples": args.mc_samples, "wall_s": round(wall, 1),
           "peak_rss_mb": round(peak_mb), "steps": steps,
           "command": "python bench/bench_participant.py " + " ".join(sys.argv[1:] if argv is
                                                                      None else argv)}
    print(json.dumps(res, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
