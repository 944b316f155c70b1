"""The run settings: everything that changes the results, plus how to run.

:class:`Settings` is built once by the command line (:mod:`phys_bids.cli`) from its
arguments and handed down; no lower layer reads the command line or a global
configuration. :meth:`Settings.digest` names the settings that change the outputs,
so that a later run with other settings refuses to mix its outputs with these.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from . import __version__
from .bids.protocol import Protocol

__all__ = ["Settings"]


@dataclass
class Settings:
    """Everything that changes the results, plus how to run (workers, threads)."""

    model: str = "seg-physics"
    skull_strip: str = "deepbet"
    seed: int = 0
    omp_nthreads: int = 1
    nprocs: int = 1
    device: str = "cpu"
    worker: str = "serial"
    slurm_args: str = ""
    overwrite: bool = False
    protocol_file: str | None = None
    mc_samples: int = 0
    #: qMRI estimator (None: no maps and no harmonised image)
    qmri_model: str | None = None
    #: preset name or JSON file of the harmonised image's protocol
    reference_protocol: str = "mprage-3t"
    #: what the physics branch is told of an acquisition outside its training space:
    #: "none" the acquisition itself, "contrast" the training acquisition of nearest
    #: reference-tissue contrast (:func:`~phys_bids.physics.tissues.nearest_training_acquisition`)
    physics_clamp: str = "none"
    #: re-render each image at the reference protocol by the signal equation before
    #: segmenting it (:mod:`phys_bids.preproc.harmonise`), telling the physics branch that protocol
    harmonise_contrast: bool = False
    #: "network": the physics-aware network (``model``); "bayes": the physics-tied
    #: Bayesian segmentation (:mod:`phys_bids.models.bayes`)
    segmenter: str = "network"

    @cached_property
    def _protocol_text(self) -> str:
        return Path(self.protocol_file).read_text() if self.protocol_file else ""

    @cached_property
    def reference(self) -> dict:
        """The harmonised image's protocol: name, sequence, parameters (SI), fields."""
        from .bids.protocol import load_reference_protocol

        return load_reference_protocol(self.reference_protocol)

    @cached_property
    def protocol(self) -> Protocol | None:
        """The protocol file, read once for all subjects."""
        return Protocol.load(self.protocol_file) if self.protocol_file else None

    def digest(self, model_sha256: str, template: str, qmri_sha256: str | None = None) -> str:
        """Hash of the settings that change outputs (not the worker or thread counts...
        except ``omp_nthreads``, which can change the last bits of float sums)."""
        qmri = ({"qmri": self.qmri_model, "qmri_sha": qmri_sha256,
                 "reference": self.reference} if self.qmri_model else {})
        # only when set, so that outputs made before the option keep their digest
        clamp = {} if self.physics_clamp == "none" else {"physics_clamp": self.physics_clamp}
        harm = {"harmonise_contrast": True} if self.harmonise_contrast else {}
        if self.segmenter != "network":
            harm["segmenter"] = self.segmenter
        key = json.dumps({"model": self.model, "sha": model_sha256, "template": template,
                          **qmri, **clamp, **harm,
                          "skull_strip": self.skull_strip, "seed": self.seed,
                          "mc_samples": self.mc_samples,
                          "threads": self.omp_nthreads, "protocol": self._protocol_text,
                          "version": __version__}, sort_keys=True)
        return hashlib.sha256(key.encode()).hexdigest()[:16]
