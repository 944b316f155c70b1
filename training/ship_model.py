#!/usr/bin/env python
"""Pin a trained model for shipping: verify it loads, recompute its validation, write the fixture.

    python training/ship_model.py seg-physics seg-baseline

* recomputes the validation metrics on the run's own validation batches with the
  current evaluation code and stores them in the manifest (``validation``), keeping
  the training-time values in ``history``;
* writes tests/models/data/<name>-prediction.json (weights hash + a small
  prediction) that tests/models/test_network.py reproduces;
* slims checkpoint.pt: the state equal to weights.pt is named, not repeated
  (phys_bids.models.training.slim_checkpoint), so a shipped model carries its weights
  once; --init-from and resuming read it back after checking the hash.

--data defaults to $PHYS_BIDS_DATA/label-maps or ../shared/data/label-maps; a model
that ended its schedule on the MNI-aligned label maps is revalidated on those
(--aligned-data, default $XDG_CACHE_HOME/phys-bids/label-maps-mni; see
training/labels_to_mni.py).
"""

import argparse
import json
import subprocess
from pathlib import Path

from phys_bids.models.evaluation import aligned_label_maps, development_data
from phys_bids.models.registry import MODELS_DIR, load_model
from phys_bids.models.shipping import reference_prediction
from phys_bids.models.training import atomic_write_bytes, revalidate, slim_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="+", help="shipped model names")
    ap.add_argument("--data", default=str(development_data() / "label-maps"))
    ap.add_argument("--aligned-data", default=str(aligned_label_maps()))
    args = ap.parse_args(argv)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    for name in args.names:
        model = load_model(name)
        val = revalidate(model.manifest, model.network, args.data, args.aligned_data)
        manifest = dict(model.manifest)
        manifest["validation"] = {"step": manifest["steps"], **val,
                                  "computed_by": f"training/ship_model.py at {commit}"}
        atomic_write_bytes(MODELS_DIR / name / "manifest.json",
                           json.dumps(manifest, indent=1).encode())
        print(f"{name}: validation {json.dumps(val)}")
        model = load_model(name)
        ref = {"seed": 0, "shape": [32, 32, 32], "ti": 0.9,
               "weights_sha256": model.manifest["weights_sha256"]}
        ref["mean_probs"] = reference_prediction(model, seed=0, shape=(32, 32, 32), ti=0.9)
        out = ROOT / "tests" / "models" / "data" / f"{name}-prediction.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(ref, indent=1) + "\n")
        print(f"{name}: steps {model.manifest['steps']}, fixture {out.relative_to(ROOT)}")
        if (MODELS_DIR / name / "checkpoint.pt").is_file():
            saved = slim_checkpoint(MODELS_DIR / name)
            print(f"{name}: checkpoint {saved / 1e6:.1f} MB smaller (weights named, not "
                  "repeated)")


if __name__ == "__main__":
    main()
