"""Simulate images of named sequences from quantitative maps.

:func:`simulate` maps a dictionary of tissue maps and a batch of parameter sets to
a batch of images, calling the pure equations of :mod:`.sequences`. For large
volumes without gradients it works through the voxels in cache-sized chunks, so a
256^3 volume costs little more than reading the maps and writing the images.

>>> import torch
>>> maps = {"pd": torch.ones(2, 2, 2), "r1": torch.full((2, 2, 2), 1.0)}
>>> img = simulate("MPRAGE", maps, {"ti": torch.tensor([0.6, 1.2])})
>>> img.shape
torch.Size([2, 2, 2, 2])
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch import Tensor

from . import sequences as seq

__all__ = ["SEQUENCES", "SequenceModel", "simulate"]


@dataclass(frozen=True)
class SequenceModel:
    """How a named sequence maps tissue maps and parameters onto its equation."""

    name: str
    function: Callable[..., Tensor]
    maps: tuple[str, ...]
    required: tuple[str, ...]
    optional: dict
    description: str


def _spgr(pd, r1, r2s, mt=None, *, tr, te, fa, mt_on=0.0, b1t=1.0):
    mtsat = 0.0 if mt is None else mt * mt_on
    return seq.spgr(pd, r1, r2s, tr, te, fa, mtsat=mtsat, b1t=b1t)


def _mprage_static(pd, r1, *, ti, td=0.6, tau=0.010):
    return seq.mprage_static(pd, r1, ti, td=td, tau=tau)


def _mprage_ro(pd, r1, r2s, *, ti, tr, echo_spacing, fa, te=0.0, n_excitations=176,
               k_centre=0.5, inversion_efficiency=1.0, b1t=1.0):
    return seq.mprage(pd, r1, r2s, ti=ti, tr=tr, echo_spacing=echo_spacing,
                      n_excitations=n_excitations, fa=fa, te=te, k_centre=k_centre,
                      inversion_efficiency=inversion_efficiency, b1t=b1t)


def _ir(pd, r1, r2, *, ti, tr, te=0.0, inversion_efficiency=1.0):
    return seq.inversion_recovery(pd, r1, ti, tr, r2=r2, te=te,
                                  inversion_efficiency=inversion_efficiency)


def _fse(pd, r1, r2, *, tr, te):
    return seq.fse(pd, r1, r2, tr, te)


SEQUENCES: dict[str, SequenceModel] = {
    m.name: m
    for m in [
        SequenceModel("SPGR", _spgr, ("pd", "r1", "r2s", "mt"), ("tr", "te", "fa"),
                      {"mt_on": 0.0, "b1t": 1.0}, "spoiled gradient echo (FLASH/GRE)"),
        SequenceModel("MPRAGE", _mprage_static, ("pd", "r1"), ("ti",),
                      {"td": 0.6, "tau": 0.010}, "static MPRAGE equation of the papers"),
        SequenceModel("MPRAGE-RO", _mprage_ro, ("pd", "r1", "r2s"),
                      ("ti", "tr", "echo_spacing", "fa"),
                      {"te": 0.0, "n_excitations": 176, "k_centre": 0.5,
                       "inversion_efficiency": 1.0, "b1t": 1.0},
                      "MPRAGE with the full read-out train"),
        SequenceModel("FLAIR", _ir, ("pd", "r1", "r2"), ("ti", "tr"),
                      {"te": 0.0, "inversion_efficiency": 1.0}, "inversion recovery / FLAIR"),
        SequenceModel("FSE", _fse, ("pd", "r1", "r2"), ("tr", "te"), {}, "fast spin echo"),
    ]
}


_COMPILED: dict[str, Callable] = {}


def _compiled(model: SequenceModel, magnitude: bool) -> Callable:
    key = f"{model.name}:{magnitude}"
    if key not in _COMPILED:
        fn = model.function

        def run(*maps, **params):
            out = fn(*maps, **params)
            return out.abs() if magnitude else out

        _COMPILED[key] = torch.compile(run, dynamic=False)
    return _COMPILED[key]


def simulate(sequence: str, maps: dict[str, Tensor], params: dict, *,
             magnitude: bool = True, chunk: int | None = None, backend: str = "eager") -> Tensor:
    """Simulate a batch of images.

    Parameters
    ----------
    sequence : str
        A key of :data:`SEQUENCES` (``SPGR``, ``MPRAGE``, ``MPRAGE-RO``, ``FLAIR``, ``FSE``).
    maps : dict of tensors, each of shape (*spatial)
        Quantitative maps: ``pd`` (a.u.), ``r1``, ``r2s``, ``r2`` (1/s), ``mt`` (p.u.).
    params : dict
        Parameters of the sequence, each a number or a tensor of shape ``(B,)``.
    magnitude : bool
        Return ``|S|`` (what a magnitude image shows); ``False`` keeps the sign.
    backend : {"eager", "compile"}
        ``"compile"`` fuses the equation into one loop with ``torch.compile`` (needs a
        C++ compiler; the first call per sequence compiles for ~40 s on CPU). Results
        agree with eager to float rounding.
    chunk : int, optional
        Voxels per chunk. Default: 32k-voxel chunks run in parallel over the torch
        threads when no input requires grad and the volume is larger; else one pass.

    Returns
    -------
    tensor, shape (B, *spatial)
    """
    if sequence not in SEQUENCES:
        raise ValueError(f"unknown sequence {sequence!r}; known: {sorted(SEQUENCES)}")
    model = SEQUENCES[sequence]
    missing = [p for p in model.required if p not in params]
    if missing:
        raise KeyError(f"{sequence} needs parameters {missing}")
    unknown = set(params) - set(model.required) - set(model.optional)
    if unknown:
        raise KeyError(f"{sequence} does not take parameters {sorted(unknown)}")
    ref = maps[model.maps[0]]
    spatial = ref.shape
    pvals = {k: torch.as_tensor(v, dtype=ref.dtype, device=ref.device) for k, v in params.items()}
    batch = max([v.numel() for v in pvals.values()] + [1])
    pvals = {k: v.reshape(-1, 1).expand(batch, 1) for k, v in pvals.items()}
    margs = [maps[m].reshape(1, -1) if m in maps else None for m in model.maps]
    for name, m in zip(model.maps, margs, strict=True):
        if m is None and name != "mt":
            raise KeyError(f"{sequence} needs the {name!r} map")
    nvox = ref.numel()
    tensors = [*pvals.values(), *[m for m in margs if m is not None]]
    needs_grad = any(t.requires_grad for t in tensors)
    if backend == "compile":
        fn = _compiled(model, magnitude)
        with torch.no_grad() if not needs_grad else torch.enable_grad():
            out = fn(*margs, **pvals)
        return out.reshape(batch, *spatial)
    if backend != "eager":
        raise ValueError(f"backend must be 'eager' or 'compile', not {backend!r}")
    if chunk is None:
        chunk = nvox if (needs_grad or nvox <= 1 << 15) else 1 << 15

    def run(lo, hi):
        out = model.function(*[None if m is None else m[:, lo:hi] for m in margs], **pvals)
        return out.abs() if magnitude else out

    if chunk >= nvox:
        out = run(0, nvox)
    else:
        out = torch.empty((batch, nvox), dtype=ref.dtype, device=ref.device)
        starts = range(0, nvox, chunk)

        def work(lo):
            out[:, lo:lo + chunk] = run(lo, min(lo + chunk, nvox))

        nthreads = torch.get_num_threads()
        if ref.device.type != "cpu" or nthreads == 1:
            with torch.no_grad():
                for lo in starts:
                    work(lo)
        else:
            # Cache-sized chunks are too small for torch's intra-op threads to pay
            # off; run whole chunks in parallel instead, one intra-op thread each.
            torch.set_num_threads(1)
            try:
                with ThreadPoolExecutor(nthreads) as pool:  # _no_grad: grad mode is per thread
                    list(pool.map(_no_grad(work), starts))
            finally:
                torch.set_num_threads(nthreads)
    return out.reshape(batch, *spatial)


def _no_grad(fn):
    def wrapped(*args):
        with torch.no_grad():
            return fn(*args)

    return wrapped
