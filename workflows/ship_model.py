#!/usr/bin/env python
"""Pin a trained model for shipping: verify it loads, write the test fixture.

    python workflows/ship_model.py seg-physics seg-baseline

Writes tests/models/data/<name>-prediction.json (weights hash + a small prediction)
that tests/models/test_network.py reproduces.
"""

import json
import sys
from pathlib import Path

from phys_bids.models.registry import load_model
from phys_bids.models.shipping import reference_prediction

ROOT = Path(__file__).resolve().parents[1]


def main(names):
    for name in names:
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
