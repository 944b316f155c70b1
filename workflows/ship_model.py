#!/usr/bin/env python
"""Pin a trained model for shipping: verify it loads, recompute its validation, write the fixture.

    python workflows/ship_model.py seg-physics seg-baseline

* recomputes the validation metrics on the run's own validation batches with the
  current evaluation code and stores them in the manifest (``validation``), keeping
  the training-time values in ``history``;
* writes tests/models/data/<name>-prediction.json (weights hash + a small
  prediction) that tests/models/test_network.py reproduces.

--data defaults to $PHYS_BIDS_DATA/label-maps or ../shared/data/label-maps.
"""

import json
import subprocess
import sys
from pathlib import Path

from phys_bids.models.registry import MODELS_DIR, load_model
from phys_bids.models.shipping import reference_prediction
from phys_bids.models.training import atomic_write_bytes, revalidate
from phys_bids.synth.evaluation import development_data

ROOT = Path(__file__).resolve().parents[1]
DATA = development_data() / "label-maps"


def main(names):
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    for name in names:
        model = load_model(name)
        val = revalidate(model.manifest, model.network, DATA)
        manifest = dict(model.manifest)
        manifest["validation"] = {"step": manifest["steps"], **val,
                                  "computed_by": f"workflows/ship_model.py at {commit}"}
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


if __name__ == "__main__":
    main(sys.argv[1:])
