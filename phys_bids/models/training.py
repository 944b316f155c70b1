"""Training of the segmentation models on the synthetic generator (CPU-sized, resumable).

:func:`train` runs a schedule of ``max_steps`` steps, each one same-subject batch
of ``realisations`` simulated patches (:class:`phys_bids.synth.SynthGenerator`),
with the loss ``stochastic CE + soft Dice + lambda * stratification`` (optionally plus
the contrastive and output-consistency terms). It stops early when
``time_limit_min`` is reached, and always leaves in ``out_dir``:

* ``checkpoint.pt``: model, optimiser, step, RNG states and history (resume point);
  a shipped one (:func:`slim_checkpoint`) names ``weights.pt`` for the state it would
  repeat, and :func:`load_checkpoint` reads it back from there;
* ``weights.pt``: the model's state dict (what inference loads): the last step's
  weights, or with ``ema_decay`` their exponential moving average (Polyak averaging)
  once it has started;
* ``manifest.json``: architecture, input normalisation, patch, parameter spaces,
  subject split, seeds, data hashes, code commit, loss curves, validation metrics
  and the sha256 of ``weights.pt``.

Every file is written atomically (temporary file, then rename).
"""

from __future__ import annotations

import copy
import io
import json
import logging
import math
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..io import atomic_write, sha256
from ..physics import PhysicsEncoder
from ..physics.tissues import reference_tissues
from ..synth import SynthConfig, SynthGenerator, load_head
from .losses import (
    contrastive_loss,
    soft_dice_loss,
    stochastic_cross_entropy,
    stratification_loss,
)
from .qmri_net import MAPS, UNITS, qmri_loss, qmri_metrics, raw_to_maps
from .unet import PhysicsUNet

__all__ = ["TrainConfig", "resolve_config", "train", "needs_aligned", "sha256",
           "atomic_write_bytes", "evaluate_batches", "validation_batches", "revalidate",
           "run_validation_batches", "load_checkpoint", "slim_checkpoint"]

log = logging.getLogger("phys_bids.train")


@dataclass
class TrainConfig:
    """Everything that defines a training run (written to the manifest)."""

    name: str = "seg-physics"
    #: "segmentation" (GM/WM/CSF fractions) or "qmri" (PD, R1, R2*, MT maps)
    task: str = "segmentation"
    physics: bool = True
    channels: tuple[int, ...] = (8, 16, 32, 64)
    dropout: float = 0.1
    input_dropout: float = 0.05
    #: PhysicsUNet input_dropout_mode: "channel" (Dropout3d, the models shipped so far: it
    #: blanks a one-channel image with probability input_dropout) or "voxel" (the papers'
    #: element-wise input-layer dropout)
    input_dropout_mode: str = "channel"
    #: train in the channels-last 3D memory layout (about 20 % faster per step on this
    #: CPU; same function, float rounding differs, so the shipped configs leave it off
    #: and replay their weights exactly)
    channels_last: bool = False
    #: normalisation of the network's blocks (PhysicsUNet): "instance" (the models shipped
    #: so far), "batch" (the physics branch survives it; window-independent inference) or
    #: "none" (no statistics: the same function in training and at any window)
    norm: str = "instance"
    #: how the physics enters (PhysicsUNet): "concat" (the models shipped so far) or
    #: "film" (modulation after the norm, which no later norm can cancel)
    injection: str = "concat"
    #: what the physics branch is told (PhysicsEncoder): "parameters" (the papers'
    #: standardised TI / TR, TE, FA features; the models shipped so far) or "contrast"
    #: (the levels of reference GM, WM, CSF under the acquisition)
    physics_encoding: str = "parameters"
    #: what the first block sees (PhysicsUNet): "intensity" (the image divided by its
    #: brain mean; the models shipped so far) or "log-contrast" (gain-invariant local
    #: log contrasts and the brain mask)
    input_transform: str = "intensity"
    patch: int = 48
    realisations: int = 4
    max_steps: int = 1500
    #: ends of earlier cosine cycles (warm restarts, Loshchilov & Hutter 2017): a longer
    #: schedule continues a committed one exactly, and a run from scratch replays both
    cycles: tuple[int, ...] = ()
    restart_lr: float | None = None  # peak of the later cycles (default lr / 2)
    #: from this step on, train on the label maps rigidly aligned to MNI
    #: (training/labels_to_mni.py), the pose and grid the application segments in;
    #: None = the label maps in their own space throughout
    aligned_from_step: int | None = None
    lr: float = 2e-3
    min_lr: float = 1e-4
    warmup: int = 20
    weight_decay: float = 1e-4
    stratification_weight: float = 1.0
    #: the same-subject L2 on the realisations' class probabilities instead of their
    #: final feature maps (losses.stratification_loss on the softmax): agreement where
    #: the volumes are read; 0 = off
    output_consistency_weight: float = 0.0
    #: Siamese acquisition-invariance loss (losses.contrastive_loss); 0 = off
    contrastive_weight: float = 0.0
    contrastive_margin: float = 1.0
    dice_weight: float = 1.0
    aleatoric_samples: int = 10
    gradient_weight: float = 1.0  # qmri: L1 on the maps' spatial gradients
    consistency_weight: float = 0.1  # qmri: re-simulated vs input image
    seed: int = 1234
    threads: int = 1
    val_every: int = 50
    checkpoint_every: int = 25
    #: exponential moving average of the weights (Polyak averaging; 0 = off): from
    #: ``ema_from_step`` on, ``ema = d * ema + (1 - d) * weights`` after every step, and the
    #: average is what ``weights.pt`` holds and validation scores (``history["val"]``;
    #: the last step's weights in ``history["val_raw"]``). Averaging leaves the training
    #: trajectory itself unchanged.
    ema_decay: float = 0.0
    ema_from_step: int = 0
    time_limit_min: float | None = None
    train_subjects: tuple[str, ...] = tuple(f"head_{i:02d}" for i in range(1, 12))
    val_subjects: tuple[str, ...] = ("head_12", "head_13")
    test_subjects: tuple[str, ...] = ("head_14", "head_15", "head_16")
    synth: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        data = dict(data)
        for k in ("channels", "train_subjects", "val_subjects", "test_subjects", "cycles"):
            if k in data:
                data[k] = tuple(data[k])
        return cls(**data)

    @classmethod
    def from_json(cls, path) -> TrainConfig:
        """Read a configuration file; ``"extends": "other.json"`` (relative to the file)
        takes that configuration and overrides the keys given here (``synth`` key by
        key), so that an arm names only what it changes."""
        return cls.from_dict(resolve_config(path))

    def __post_init__(self):
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        make_synth(self)  # the generator settings fail here, not hours into a run

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        for k in ("channels", "train_subjects", "val_subjects", "test_subjects", "cycles"):
            d[k] = list(d[k])
        return d


def resolve_config(path, _seen: tuple = ()) -> dict:
    """A configuration file's keys with its ``"extends"`` chain applied (base first)."""
    path = Path(path).resolve()
    if path in _seen:
        raise ValueError(f"{path}: configurations extend each other in a cycle")
    data = json.loads(path.read_text())
    base = data.pop("extends", None)
    if base is None:
        return data
    merged = resolve_config(path.parent / base, (*_seen, path))
    synth = {**merged.get("synth", {}), **data.get("synth", {})}
    merged.update(data)
    if synth:
        merged["synth"] = synth
    return merged


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def _atomic_torch_save(obj, path: Path) -> None:
    """torch.save through a buffer: saved to a file, the archive's inner folder is named
    after the (per-process) temporary file, so equal tensors gave other bytes and
    another sha256 in another process; from a buffer it is always ``archive``."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def load_checkpoint(folder, map_location="cpu") -> dict:
    """The whole ``checkpoint.pt`` of a model folder.

    A shipped checkpoint (:func:`slim_checkpoint`) does not repeat the state that
    ``weights.pt`` holds: it names the file and its sha256, and the state is read
    from there after the hash is checked, so resuming from it is resuming from the
    checkpoint training wrote."""
    folder = Path(folder)
    ck = torch.load(folder / "checkpoint.pt", map_location=map_location, weights_only=False)
    ref = ck.pop("in_weights", None)
    if ref is not None:
        wpath = folder / ref["file"]
        digest = sha256(wpath) if wpath.is_file() else "missing"
        if digest != ref["sha256"]:
            from .registry import ModelCorruptError

            raise ModelCorruptError(f"{wpath}: sha256 {digest[:12]}... is not the one its "
                                    f"checkpoint names ({ref['sha256'][:12]}...); cannot "
                                    "resume from this checkpoint")
        state = torch.load(wpath, map_location=map_location, weights_only=True)
        for key in ref["keys"]:
            ck[key] = state
    return ck


def slim_checkpoint(folder) -> int:
    """Drop from ``folder/checkpoint.pt`` the states equal to ``weights.pt`` (the last
    weights, or with weight averaging the average) and name the file instead.

    What a shipped model carries to be resumable is then the optimiser state, step,
    RNG states and history beside its weights, not the weights twice.
    :func:`load_checkpoint` restores the same dict. Returns the bytes saved (0 when
    nothing repeats the weights or the checkpoint is slim already)."""
    folder = Path(folder)
    path = folder / "checkpoint.pt"
    ck = torch.load(path, map_location="cpu", weights_only=False)
    if "in_weights" in ck:
        return 0
    wpath = folder / "weights.pt"
    state = torch.load(wpath, map_location="cpu", weights_only=True)
    keys = [k for k in ("model", "ema") if k in ck and _same_state(ck[k], state)]
    if not keys:
        return 0
    before = path.stat().st_size
    for k in keys:
        del ck[k]
    ck["in_weights"] = {"file": wpath.name, "sha256": sha256(wpath), "keys": keys}
    _atomic_torch_save(ck, path)
    return before - path.stat().st_size


def _git_commit() -> str:
    try:
        root = Path(__file__).resolve().parents[2]
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def make_encoder(cfg: TrainConfig) -> PhysicsEncoder:
    """The physics encoder a run trains with (its reference tissues at the generator's
    field strength)."""
    if cfg.physics_encoding == "contrast":
        field = cfg.synth.get("field_strength", SynthConfig.field_strength)
        return PhysicsEncoder(mode="contrast", tissues=reference_tissues(field))
    return PhysicsEncoder(mode=cfg.physics_encoding)


def make_synth(cfg: TrainConfig) -> SynthConfig:
    """The generator settings a run trains and validates with: its patch, realisations
    and ``synth`` overrides."""
    return SynthConfig(patch=cfg.patch, realisations=cfg.realisations, **cfg.synth)


def build_model(cfg: TrainConfig, encoder: PhysicsEncoder) -> PhysicsUNet:
    if cfg.task not in ("segmentation", "qmri"):
        raise ValueError(f"unknown task {cfg.task!r}")
    return PhysicsUNet(channels=cfg.channels, physics_dim=encoder.dim if cfg.physics else 0,
                       dropout=cfg.dropout, input_dropout=cfg.input_dropout,
                       aleatoric=cfg.task == "segmentation", norm=cfg.norm, injection=cfg.injection,
                       input_transform=cfg.input_transform,
                       input_dropout_mode=cfg.input_dropout_mode)


def _lr_at(cfg: TrainConfig, step: int) -> float:
    """Cosine schedule with linear warm-up, restarted at the ends of ``cfg.cycles``."""
    ends = [*cfg.cycles, cfg.max_steps]
    start, cycle = 0, 0
    while cycle < len(ends) - 1 and step >= ends[cycle]:
        start = ends[cycle]
        cycle += 1
    end = ends[cycle]
    peak = cfg.lr if cycle == 0 else (cfg.restart_lr or cfg.lr / 2)
    warm = cfg.warmup if cycle == 0 else 0
    if step - start < warm:
        return peak * (step - start + 1) / warm
    t = min(1.0, (step - start - warm) / max(1, end - start - warm))
    return cfg.min_lr + 0.5 * (peak - cfg.min_lr) * (1 + math.cos(math.pi * t))


def _loss(model, batch, cfg: TrainConfig, g: torch.Generator):
    if cfg.task == "qmri":
        raw, _, feats = model(batch["image"], batch["physics"] if cfg.physics else None)
        loss, parts = qmri_loss(raw, batch["maps"], batch["mask"], batch["image"],
                                batch["sequence"], batch["params"],
                                gradient_weight=cfg.gradient_weight,
                                consistency_weight=cfg.consistency_weight)
        strat = stratification_loss(feats)
        parts["strat"] = strat.item()
        return loss + cfg.stratification_weight * strat, parts
    n = batch["image"].shape[0]
    target = batch["target"][None].expand(n, -1, -1, -1, -1)
    logits, log_sigma, feats = model(batch["image"], batch["physics"] if cfg.physics else None)
    ce = stochastic_cross_entropy(logits, log_sigma, target, samples=cfg.aleatoric_samples,
                                  generator=g)
    prob = torch.softmax(logits, 1)
    dice = soft_dice_loss(prob, target)
    strat = stratification_loss(feats)
    total = ce + cfg.dice_weight * dice + cfg.stratification_weight * strat
    parts = {"ce": ce.item(), "dice": dice.item(), "strat": strat.item()}
    if cfg.output_consistency_weight > 0:
        oc = stratification_loss(prob)
        total = total + cfg.output_consistency_weight * oc
        parts["output_consistency"] = oc.item()
    if cfg.contrastive_weight > 0:
        con = contrastive_loss(feats, batch["target"], margin=cfg.contrastive_margin,
                               generator=g)
        total = total + cfg.contrastive_weight * con
        parts["contrastive"] = con.item()
    return total, parts


@torch.no_grad()
def evaluate_qmri(model, batches: list[dict], physics: bool) -> dict:
    """Per map NRMSE/PSNR/SSIM in the brain mask, and the consistency of the estimated R1
    across the realisations of a patch (CoV of its mean over the mask, x1e3)."""
    model.eval()
    per_map, covs = [], []
    for b in batches:
        raw, _, _ = model(b["image"], b["physics"] if physics else None)
        maps = raw_to_maps(raw)
        per_map.append(qmri_metrics(maps, b["maps"], b["mask"]))
        r1 = maps[:, 1][:, b["mask"]].mean(1)
        covs.append(float(r1.std(unbiased=False) / r1.mean()))
    model.train()
    out = {name: {k: sum(m[name][k] for m in per_map) / len(per_map)
                  for k in ("nrmse", "psnr_db", "ssim")} for name in MAPS}
    return {"maps": out, "nrmse_mean": sum(v["nrmse"] for v in out.values()) / len(out),
            "r1_cov_x1e3": 1e3 * sum(covs) / len(covs)}


def evaluate(model, batches: list[dict], cfg: TrainConfig) -> dict:
    fn = evaluate_qmri if cfg.task == "qmri" else evaluate_batches
    return fn(model, batches, cfg.physics)


@torch.no_grad()
def evaluate_batches(model, batches: list[dict], physics: bool) -> dict:
    """Dice (hard, vs anatomy) and CoV of tissue volumes across realisations."""
    model.eval()
    dices, covs = [], []
    for b in batches:
        logits, _, _ = model(b["image"], b["physics"] if physics else None)
        pred = logits.argmax(1)  # (N, ...)
        ref = b["target"].argmax(0)  # (...)
        probs = torch.softmax(logits, 1)
        for i in range(pred.shape[0]):  # Dice per realisation
            for k in (1, 2, 3):
                p, r = pred[i] == k, ref == k
                dices.append(float(2 * (p & r).sum() / (p.sum() + r.sum()).clamp_min(1)))
        vols = probs[:, 1:].sum((2, 3, 4))  # (N, 3) soft volumes
        covs.append((vols.std(0, unbiased=False) / vols.mean(0).clamp_min(1e-6)).tolist())
    model.train()
    cov = torch.tensor(covs).mean(0).tolist()
    return {"dice_mean": sum(dices) / len(dices),
            "cov_x1e3": {"GM": 1e3 * cov[0], "WM": 1e3 * cov[1], "CSF": 1e3 * cov[2]}}


def validation_batches(cfg: TrainConfig, val_gen: SynthGenerator) -> list[dict]:
    """The fixed validation batches of a run (2 per validation subject and sequence)."""
    vg = torch.Generator().manual_seed(cfg.seed + 999)
    return [val_gen.sample(vg, sequence=seq, head_index=h)
            for h in range(len(cfg.val_subjects)) for seq in val_gen.cfg.sequences
            for _ in range(2)]


def needs_aligned(cfg: TrainConfig) -> bool:
    """Whether the run reaches the steps on the MNI-aligned label maps (a run stopped
    before them, ``--max-steps``, does not need them; resuming the full schedule does)."""
    return cfg.aligned_from_step is not None and cfg.aligned_from_step < cfg.max_steps


def _aligned_at(cfg: TrainConfig, step: int) -> bool:
    """Whether the step trains on the MNI-aligned label maps."""
    return cfg.aligned_from_step is not None and step >= cfg.aligned_from_step


def revalidate(manifest: dict, model, data_dir, aligned_dir=None) -> dict:
    """Recompute a shipped model's validation metrics on its own validation batches.

    ``aligned_dir``: the MNI-aligned label maps, needed when the run ended on them.
    """
    cfg = TrainConfig.from_dict(manifest["train_config"])
    return evaluate(model, run_validation_batches(manifest, data_dir, aligned_dir), cfg)


def run_validation_batches(manifest: dict, data_dir, aligned_dir=None) -> list[dict]:
    """The fixed validation batches a trained model was scored on (from its manifest):
    on the MNI-aligned label maps (``aligned_dir``) when the run ended on them."""
    cfg = TrainConfig.from_dict(manifest["train_config"])
    if _aligned_at(cfg, manifest["steps"]):
        if aligned_dir is None:
            raise ValueError(f"{manifest['name']} ended on the MNI-aligned label maps: "
                             "give their folder (training/labels_to_mni.py)")
        data_dir = aligned_dir
    heads = [load_head(p) for p in _label_paths(data_dir, cfg.val_subjects).values()]
    gen = SynthGenerator(heads, make_synth(cfg), make_encoder(cfg))
    torch.manual_seed(cfg.seed)
    return validation_batches(cfg, gen)


def _label_paths(folder, subjects) -> dict[str, Path]:
    folder = Path(folder)
    paths = {s: folder / f"{s}.nii.gz" for s in subjects}
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        raise FileNotFoundError(f"label maps not found: {missing[:3]} (set --data to the "
                                "folder holding head_XX.nii.gz)")
    return paths


def _warn_changed_data(previous: dict, current: dict) -> None:
    """Log the label maps whose sha256 differ from those the resumed run recorded: the
    run continues, but it no longer replays the weights of an uninterrupted run."""
    for key in ("data", "aligned_data"):
        old, new = previous.get(key) or {}, current.get(key) or {}
        changed = sorted(s for s in old.keys() & new.keys()
                         if old[s]["sha256"] != new[s]["sha256"])
        if changed:
            log.warning("%s: %s differ from the label maps this run trained on so far "
                        "(sha256 in its manifest); it will not replay an uninterrupted run",
                        key, ", ".join(changed))


def _ema_start(model: torch.nn.Module) -> dict:
    """The average at its first step: a copy of the model's weights."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@torch.no_grad()
def _ema_update(ema: dict, model: torch.nn.Module, decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * weights`` for floating-point entries of the
    state dict; integer buffers (counters) take the model's value."""
    for k, v in model.state_dict().items():
        if v.is_floating_point():
            ema[k].lerp_(v, 1.0 - decay)
        else:
            ema[k].copy_(v)


def train(cfg: TrainConfig, data_dir, out_dir, *, resume: bool = True, device: str = "cpu",
          init_from: str | Path | None = None, aligned_dir=None) -> dict:
    """Train (or continue training) one model; returns the manifest.

    ``init_from``: a model folder or shipped model name whose ``checkpoint.pt`` starts
    the run when ``out_dir`` has no checkpoint of its own (fine-tuning a committed
    model in a new folder); the manifest records it as ``initialised_from``.

    ``aligned_dir``: the label maps aligned to MNI, which the steps from
    ``cfg.aligned_from_step`` on train on (required when it is set). Switching in the
    middle of a run gives the same weights as stopping at that step and resuming.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    initialised_from = None
    if init_from is not None:
        from .registry import model_folder

        try:
            src = model_folder(init_from)
        except FileNotFoundError:
            src = Path(init_from)
        if not (src / "checkpoint.pt").is_file():
            raise FileNotFoundError(f"{init_from}: no checkpoint.pt to start from")
        parent = json.loads((src / "manifest.json").read_text())
        initialised_from = {"model": parent["name"], "steps": parent["steps"],
                            "weights_sha256": parent["weights_sha256"]}
        if not (out / "checkpoint.pt").exists():
            _atomic_torch_save(load_checkpoint(src), out / "checkpoint.pt")
            log.info("starting from %s (%d steps)", src, parent["steps"])
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    subjects = (*cfg.train_subjects, *cfg.val_subjects)
    paths = _label_paths(data_dir, subjects)
    aligned_paths = None
    if needs_aligned(cfg):
        if aligned_dir is None:
            raise ValueError(f"{cfg.name} trains on MNI-aligned label maps from step "
                             f"{cfg.aligned_from_step}: give their folder (--aligned-data)")
        aligned_paths = _label_paths(aligned_dir, subjects)
    encoder = make_encoder(cfg)
    synth = make_synth(cfg)

    def generators(label_paths):
        """Training generator and fixed validation batches on these label maps.

        The global RNG (dropout) is left as it was, so that switching to the aligned
        maps in a run equals resuming from a checkpoint at that step."""
        rng, t0 = torch.get_rng_state(), time.time()
        heads = {s: load_head(p) for s, p in label_paths.items()}
        log.info("loaded %d label maps from %s in %.1f s", len(heads),
                 next(iter(label_paths.values())).parent, time.time() - t0)
        gen = SynthGenerator([heads[s] for s in cfg.train_subjects], synth, encoder, device)
        val_gen = SynthGenerator([heads[s] for s in cfg.val_subjects], synth, encoder,
                                 device)
        batches = validation_batches(cfg, val_gen)
        torch.set_rng_state(rng)
        return gen, batches

    model = build_model(cfg, encoder).to(device)
    layout = torch.channels_last_3d if cfg.channels_last else torch.contiguous_format
    model = model.to(memory_format=layout)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    g = torch.Generator().manual_seed(cfg.seed)
    step, history = 0, {"step": [], "loss": [], "val": []}
    ema = None  # the averaged state dict, once cfg.ema_from_step is reached
    ckpt_path = out / "checkpoint.pt"
    if resume and ckpt_path.exists():
        ck = load_checkpoint(out, map_location=device)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        g.set_state(ck["generator"])
        torch.set_rng_state(ck["torch_rng"])
        step, history = ck["step"], ck["history"]
        if cfg.ema_decay > 0 and ck.get("ema") is not None:
            ema = ck["ema"]
        history.setdefault("resumed_at", []).append(step)
        log.info("resumed %s at step %d", cfg.name, step)
    aligned = _aligned_at(cfg, step)
    gen, val_batches = generators(aligned_paths if aligned else paths)
    code_commit = _git_commit()  # the code this run started from
    manifest_base = {
        "name": cfg.name,
        "task": ("tissue segmentation (background, GM, WM, CSF)" if cfg.task == "segmentation"
                 else "qMRI map estimation (PD, R1, R2*, MT) from one image"),
        "kind": cfg.task,
        "architecture": {"class": "phys_bids.models.PhysicsUNet", "args": model.config},
        "input": {"normalisation": "image / mean(image inside brain mask), skull-stripped, "
                                   "bias-corrected, RAS, 1 mm",
                  "grid_mm": 1.0, "patch": cfg.patch, "orientation": "RAS"},
        "physics_encoder": encoder.to_dict() if cfg.physics else None,
        "parameter_spaces": synth.spaces,
        **({"labels": {"0": "background", "1": "GM", "2": "WM", "3": "CSF"}}
           if cfg.task == "segmentation" else
           {"maps": {m: {"channel": i, "units": UNITS[m]} for i, m in enumerate(MAPS)},
            "output_transform": "phys_bids.models.qmri_net.raw_to_maps"}),
        "split": {"train": list(cfg.train_subjects), "val": list(cfg.val_subjects),
                  "test": list(cfg.test_subjects)},
        "synth": synth.to_dict(),
        "train_config": cfg.to_dict(),
        "data": {s: {"file": paths[s].name, "sha256": sha256(paths[s])} for s in paths},
        **({"aligned_data": {s: {"file": p.name, "sha256": sha256(p)}
                             for s, p in aligned_paths.items()},
            "aligned_from_step": cfg.aligned_from_step} if aligned_paths else {}),
        **({"initialised_from": initialised_from} if initialised_from else {}),
    }
    if step > 0 and (out / "manifest.json").is_file():
        _warn_changed_data(json.loads((out / "manifest.json").read_text()), manifest_base)
    if cfg.ema_decay > 0:
        manifest_base["weight_averaging"] = {
            "method": "exponential moving average of the weights after every step",
            "decay": cfg.ema_decay, "from_step": cfg.ema_from_step,
            "weights.pt": "the average (the last step's weights are checkpoint.pt 'model')"}
    model.train()
    t_start = time.time()
    last_val = history["val"][-1] if history["val"] else None
    ema_model = copy.deepcopy(model) if cfg.ema_decay > 0 else None
    if ema is None and cfg.ema_decay > 0 and step >= cfg.ema_from_step:
        # a run from scratch with ema_from_step 0, or one resumed at or after
        # ema_from_step from a checkpoint without an average: it starts here
        ema = _ema_start(model)

    def shipped_model():
        """The network whose weights go to weights.pt: the average once it exists."""
        if ema is None:
            return model
        ema_model.load_state_dict(ema)
        return ema_model

    def save():
        weights = out / "weights.pt"
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        shipped = state if ema is None else {k: v.contiguous() for k, v in ema.items()}
        _atomic_torch_save(shipped, weights)
        _atomic_torch_save({"model": state, "optimizer": opt.state_dict(),
                            "generator": g.get_state(), "torch_rng": torch.get_rng_state(),
                            "step": step, "history": history,
                            **({"ema": shipped} if ema is not None else {})}, ckpt_path)
        manifest = dict(manifest_base)
        manifest.update({
            "steps": step, "complete": step >= cfg.max_steps, "code_commit": code_commit,
            "torch": torch.__version__, "history": history, "validation": last_val,
            "weights_sha256": sha256(weights), "weights_file": "weights.pt",
            "reproduce": f"python training/train_segmentation.py --config "
                         f"training/configs/{cfg.name}.json --out <dir>"
                         + (f" --init-from {initialised_from['model']} --data <the label maps "
                            "whose sha256 are in 'data'>" if initialised_from else ""),
        })
        atomic_write_bytes(out / "manifest.json", json.dumps(manifest, indent=1).encode())
        return manifest

    manifest = None
    session_start = step
    while step < cfg.max_steps:
        if not aligned and _aligned_at(cfg, step):
            gen, val_batches = generators(aligned_paths)
            aligned = True
            log.info("%s: from step %d on the MNI-aligned label maps", cfg.name, step)
        for pg in opt.param_groups:
            pg["lr"] = _lr_at(cfg, step)
        batch = gen.sample(g)
        batch["image"] = batch["image"].contiguous(memory_format=layout)
        loss, parts = _loss(model, batch, cfg, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        step += 1
        if ema is not None:
            _ema_update(ema, model, cfg.ema_decay)
        elif cfg.ema_decay > 0 and step >= cfg.ema_from_step:
            ema = _ema_start(model)
        history["step"].append(step)
        history["loss"].append(round(loss.item(), 5))
        for k, v in parts.items():
            history.setdefault(k, []).append(round(v, 5))
        if step % 10 == 0:
            log.info("%s step %d/%d loss %.4f (%s) %.1f s/step", cfg.name, step, cfg.max_steps,
                     loss.item(), " ".join(f"{k} {v:.4f}" for k, v in parts.items()),
                     (time.time() - t_start) / max(1, step - session_start))
        if step % cfg.val_every == 0 or step == cfg.max_steps:
            last_val = {"step": step, **evaluate(shipped_model(), val_batches, cfg)}
            history["val"].append(last_val)
            if ema is not None:
                history.setdefault("val_raw", []).append(
                    {"step": step, **evaluate(model, val_batches, cfg)})
            log.info("%s validation %s", cfg.name, json.dumps(last_val))
        out_of_time = (cfg.time_limit_min is not None
                       and time.time() - t_start > 60 * cfg.time_limit_min)
        if step % cfg.checkpoint_every == 0 or step == cfg.max_steps or out_of_time:
            manifest = save()
        if out_of_time:
            log.info("%s time limit reached at step %d; resume with the same command", cfg.name,
                     step)
            break
    if manifest is None:
        manifest = save()
    return manifest
