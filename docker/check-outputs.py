#!/usr/bin/env python3
"""Check a phys-bids output folder written by a container run (standard library only).

    python3 docker/check-outputs.py OUT --container docker [--subjects 01]

Asserts: dataset_description names phys-bids and the container; every T1w run of the
group table has its dseg, three probseg, preproc T1w, brain mask and morph table;
volumes are finite and plausible (GM 300-1200 mL, WM 250-1000 mL, ICV 900-2500 mL);
with --container, nothing in OUT is owned by root (the image runs as its own user). Prints one line
per check and exits 1 on the first failure.
"""

import argparse
import csv
import json
import math
import os
import sys
from pathlib import Path


def fail(msg: str) -> None:
    print(f"FAIL: {msg}")
    sys.exit(1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--container", default=None, help="expected GeneratedBy Container.Type")
    args = ap.parse_args()
    out = args.out
    desc = json.loads((out / "dataset_description.json").read_text())
    gen = desc["GeneratedBy"][0]
    if gen["Name"] != "phys-bids" or desc.get("DatasetType") != "derivative":
        fail(f"dataset_description: {gen}")
    if args.container and gen.get("Container", {}).get("Type") != args.container:
        fail(f"GeneratedBy.Container is {gen.get('Container')}, expected {args.container}")
    print(f"ok dataset_description: {gen['Name']} {gen['Version']} {gen.get('Container')}")
    rows = list(csv.DictReader((out / "group" / "volumes.tsv").open(), delimiter="\t"))
    if not rows:
        fail("group/volumes.tsv has no rows")
    for r in rows:
        stem = Path(r["source"]).name.replace("_T1w.nii.gz", "")
        anat = out / Path(r["source"]).parent
        need = [f"{stem}_dseg.nii.gz", f"{stem}_desc-preproc_T1w.nii.gz",
                f"{stem}_desc-brain_mask.nii.gz", f"{stem}_morph.tsv",
                *(f"{stem}_label-{t}_probseg.nii.gz" for t in ("GM", "WM", "CSF"))]
        missing = [n for n in need if not (anat / n).is_file()]
        if missing:
            fail(f"{stem}: missing {missing}")
        v = {k: float(r[f"{k}_ml"]) for k in ("GM", "WM", "CSF", "ICV")}
        if not all(math.isfinite(x) for x in v.values()):
            fail(f"{stem}: non-finite volumes {v}")
        if not (300 < v["GM"] < 1200 and 250 < v["WM"] < 1000 and 900 < v["ICV"] < 2500):
            fail(f"{stem}: implausible volumes {v}")
        print(f"ok {stem}: GM {v['GM']:.1f} WM {v['WM']:.1f} CSF {v['CSF']:.1f} "
              f"ICV {v['ICV']:.1f} mL, in training space: {r['in_training_space']}")
    if (out / "group" / "site_effects.json").is_file():
        print("ok group/site_effects.json")
    else:
        fail("group/site_effects.json missing")
    root_owned = [str(p) for p in out.rglob("*") if p.lstat().st_uid == 0]
    if args.container and os.geteuid() == 0 and root_owned:
        fail(f"{len(root_owned)} files owned by root, e.g. {root_owned[:2]}")
    print(f"ok {len(rows)} runs; no file owned by root")
    return 0


if __name__ == "__main__":
    sys.exit(main())
