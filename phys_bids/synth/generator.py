"""On-the-fly synthetic subjects: labels -> qMRI maps -> simulated scans (qSynth style).

One call of :meth:`SynthGenerator.sample` draws a *virtual subject* (tissue
parameters per class from the priors of :mod:`.tissues`, smooth within-class
variation), a patch location and a random spatial transform (rotation, scaling,
smooth elastic displacement), computes tissue fractions by 2x super-sampling the
labels (partial volume), and simulates **N realisations of the same patch** with
different acquisition parameters of one sequence (same-subject batch
stratification, Borges et al. 2021). Each realisation gets its own transmit and
receive fields, Rician noise, optional through-plane blur and skull-stripping
imperfection. This is the augmentation layer of the paper, in torch, on any device.

Images are normalised by the mean signal inside the brain mask of the *whole*
subject (computed exactly from the class volumes), which is what inference
computes on a skull-stripped, bias-corrected image (:func:`phys_bids.intensity.normalise_image`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from ..physics import SPACES, PhysicsEncoder, rician_noise, smooth_random_field
from ..physics.simulate import SEQUENCES
from ..physics.tissues import CLASSES, TARGET_OF_CLASS, priors_at

__all__ = ["Head", "SynthGenerator", "load_head", "true_maps"]

_BRAIN_CLASSES = [CLASSES.index(c) for c in ("gm_cortex", "gm_deep", "wm", "csf")]


def load_head(path) -> Head:
    """Load a label map, reorient it to RAS at its own resolution, map to classes."""
    import nibabel as nib

    from ..physics.tissues import label_to_class

    img = nib.as_closest_canonical(nib.load(str(path)))
    zooms = img.header.get_zooms()[:3]
    if not np.allclose(zooms, 1.0, atol=1e-3):
        raise ValueError(f"{path}: label maps must be 1 mm isotropic, got {zooms}")
    cls = label_to_class(np.asarray(img.dataobj))
    # crop to the head to save memory (keep a margin for spatial augmentation)
    nz = np.argwhere(cls > 0)
    lo = np.maximum(nz.min(0) - 8, 0)
    hi = np.minimum(nz.max(0) + 9, cls.shape)
    cls = np.ascontiguousarray(cls[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]])
    return Head(name=str(path), classes=cls)


@dataclass
class Head:
    """A subject's class volume (RAS, 1 mm) with cached sampling helpers."""

    name: str
    classes: np.ndarray
    brain_voxels: np.ndarray = field(init=False, repr=False)
    brain_class_fraction: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        brain = np.isin(self.classes, _BRAIN_CLASSES)
        idx = np.argwhere(brain)
        rng = np.random.default_rng(0)
        keep = rng.choice(len(idx), size=min(len(idx), 50000), replace=False)
        self.brain_voxels = idx[np.sort(keep)]
        counts = np.bincount(self.classes[brain].ravel(), minlength=len(CLASSES))
        self.brain_class_fraction = counts / counts.sum()


def true_maps(cmaps: dict[str, Tensor], fractions: Tensor) -> Tensor:
    """The true PD, R1, R2*, MTsat maps (4, ...): per voxel, the partial-volume weighted
    mean of its tissues' values (``cmaps[p]``: (K, ...) per present class)."""
    w = fractions / fractions.sum(0).clamp_min(1e-6)
    return torch.stack([(cmaps[k] * w).sum(0) for k in ("pd", "r1", "r2s", "mt")])


@dataclass
class SynthConfig:
    """Settings of the generator (stored in the model manifest)."""

    patch: int = 64
    realisations: int = 4
    sequences: tuple[str, ...] = ("MPRAGE", "SPGR")
    spaces: dict = field(default_factory=lambda: {"MPRAGE": "mprage-id", "SPGR": "spgr-id"})
    rotation_deg: float = 12.0
    scale: float = 0.10
    elastic_mm: float = 1.5
    snr: tuple[float, float] = (15.0, 80.0)
    bias_strength: float = 0.2
    b1t_strength: float = 0.08
    blur_probability: float = 0.25
    mask_jitter_probability: float = 0.3
    field_strength: float = 3.0
    #: draw the patch centre uniformly within its voxel. Off (the shipped models): the
    #: centre sits on a label voxel and the 2x grid puts every unrotated 1 mm voxel
    #: across 2x2x2 label voxels, so the network sees the anatomy at one phase only
    subvoxel_shift: bool = False
    #: input-level augmentation, off in the shipped models: each realisation's normalised
    #: image is raised to the power exp(U(-gamma_jitter, gamma_jitter)) and multiplied by
    #: exp(U(-level_jitter, level_jitter)). A network without normalisation otherwise
    #: learns the tissue borders at absolute levels of the brain-mean-normalised input,
    #: which the application's images do not share (docs/segmentation.md, input level).
    #: Segmentation only: the qMRI consistency loss re-simulates the unjittered image.
    level_jitter: float = 0.0
    gamma_jitter: float = 0.0
    #: partial-volume augmentation, off in the shipped models: the patch's class
    #: fractions are smoothed by a Gaussian of sigma U(0, pv_sigma) voxels before the
    #: simulation, so that mixed voxels are not confined to the label borders; the
    #: targets are the smoothed fractions. The demo heads (ICBM152 population-average
    #: tissue maps) hold 65 % of their brain volume in voxels whose largest fraction is
    #: below 0.9 (docs/segmentation.md, partial volume). No draw when off.
    pv_sigma: float = 0.0
    #: share of the patches that get the partial-volume smoothing (the others stay
    #: sharp). 1.0 (default) draws nothing, so configs without it replay their streams.
    pv_probability: float = 1.0
    #: oversampling of a part of a training space, off in the shipped models:
    #: ``{sequence: [space, probability]}`` draws each realisation of that sequence
    #: from ``space`` with that probability and from ``spaces[sequence]`` otherwise.
    #: ``space`` must lie inside ``spaces[sequence]`` (e.g. ``spgr-id-lowfa`` inside
    #: ``spgr-id``), so the network stays in its training space and the physics
    #: encoding keeps its standardisation; only the weight of a corner changes. No draw
    #: for a sequence without an entry, so configs without it replay their streams.
    oversample: dict = field(default_factory=dict)

    def __post_init__(self):
        """Refuse settings outside their meaning, naming the field: a training config
        with the rotation in radians, the SNR bounds swapped or a probability in percent
        would otherwise train a model for hours on images nobody asked for."""
        self.sequences = tuple(self.sequences)
        self.snr = tuple(float(v) for v in self.snr)
        bad = []
        if self.patch < 8:
            bad.append(f"patch must be at least 8 voxels, got {self.patch}")
        if self.realisations < 1:
            bad.append(f"realisations must be at least 1, got {self.realisations}")
        for seq in self.sequences:
            if seq not in SEQUENCES:
                bad.append(f"sequence {seq!r} is not one of {sorted(SEQUENCES)}")
            elif seq not in self.spaces:
                bad.append(f"sequence {seq!r} has no parameter space in spaces")
            elif self.spaces[seq] not in SPACES or SPACES[self.spaces[seq]].sequence != seq:
                known = sorted(k for k, v in SPACES.items() if v.sequence == seq)
                bad.append(f"spaces[{seq!r}] = {self.spaces[seq]!r} is not a parameter "
                           f"space of {seq} ({known})")
        if not self.sequences:
            bad.append("sequences is empty")
        for seq, entry in self.oversample.items():
            if seq not in self.sequences or seq not in self.spaces:
                bad.append(f"oversample names {seq!r}, not one of the sequences "
                           f"{list(self.sequences)}")
                continue
            if not (isinstance(entry, (list, tuple)) and len(entry) == 2):
                bad.append(f"oversample[{seq!r}] must be [space, probability], got {entry!r}")
                continue
            name, prob = entry
            main = SPACES.get(self.spaces[seq])
            if name not in SPACES or SPACES[name].sequence != seq:
                bad.append(f"oversample[{seq!r}] space {name!r} is not a parameter space of {seq}")
            elif main is not None and not SPACES[name].within(main):
                bad.append(f"oversample[{seq!r}] space {name!r} does not lie inside "
                           f"{main.name!r}")
            if isinstance(prob, bool) or not isinstance(prob, (int, float)) \
                    or not 0.0 <= prob <= 1.0:
                bad.append(f"oversample[{seq!r}] probability must be in [0, 1], got {prob}")
        if not 0.0 <= self.rotation_deg <= 180.0:
            bad.append(f"rotation_deg must be in [0, 180] degrees, got {self.rotation_deg}")
        if not 0.0 <= self.scale < 1.0:
            bad.append(f"scale must be in [0, 1) (a fraction), got {self.scale}")
        if len(self.snr) != 2 or not 0.0 < self.snr[0] <= self.snr[1]:
            bad.append(f"snr must be (low, high) with 0 < low <= high, got {list(self.snr)}")
        for name in ("bias_strength", "b1t_strength"):
            if not 0.0 <= getattr(self, name) < 1.0:
                bad.append(f"{name} must be in [0, 1) (a fraction), got {getattr(self, name)}")
        for name in ("blur_probability", "mask_jitter_probability", "pv_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                bad.append(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("elastic_mm", "level_jitter", "gamma_jitter", "pv_sigma"):
            if getattr(self, name) < 0.0:
                bad.append(f"{name} must not be negative, got {getattr(self, name)}")
        if not 0.0 < self.field_strength <= 11.7:
            bad.append(f"field_strength must be in (0, 11.7] T, got {self.field_strength}")
        if bad:
            raise ValueError("generator settings: " + "; ".join(bad))

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["sequences"] = list(self.sequences)
        d["snr"] = list(self.snr)
        return d


class SynthGenerator:
    """Draw same-subject batches of simulated patches with soft tissue targets.

    Parameters
    ----------
    heads : list of Head
        Training anatomies.
    config : SynthConfig
    encoder : PhysicsEncoder
        Encodes each realisation's parameters for the physics branch.
    device : torch.device
    """

    def __init__(self, heads: list[Head], config: SynthConfig | None = None,
                 encoder: PhysicsEncoder | None = None, device="cpu"):
        self.heads = heads
        self.cfg = config or SynthConfig()
        self.encoder = encoder or PhysicsEncoder(self.cfg.sequences)
        self.device = torch.device(device)
        self.priors = priors_at(self.cfg.field_strength)

    # -- geometry -------------------------------------------------------------------
    def _sample_grid(self, head: Head, g: torch.Generator, patch: int) -> Tensor:
        """Voxel coordinates (in the head volume) of a 2x super-sampled patch grid."""
        cfg = self.cfg
        ss = 2 * patch
        centre = torch.as_tensor(
            head.brain_voxels[int(torch.randint(len(head.brain_voxels), (1,), generator=g))],
            dtype=torch.float64)
        if cfg.subvoxel_shift:
            centre = centre + torch.rand(3, generator=g, dtype=torch.float64) - 0.5
        ang = (torch.rand(3, generator=g, dtype=torch.float64) * 2 - 1) * math.radians(
            cfg.rotation_deg)
        rot = _rotation(ang)
        scale = 1.0 + (torch.rand(3, generator=g, dtype=torch.float64) * 2 - 1) * cfg.scale
        a = rot * scale[None, :]
        u = (torch.arange(ss, dtype=torch.float64) + 0.5) / 2.0 - patch / 2.0  # mm
        grid = torch.stack(torch.meshgrid(u, u, u, indexing="ij"), dim=-1)  # (ss,ss,ss,3)
        pts = grid @ a.T + centre
        if cfg.elastic_mm > 0:
            disp = smooth_random_field((ss, ss, ss), control_points=4, batch=3, generator=g,
                                       dtype=torch.float64)
            pts = pts + cfg.elastic_mm * disp.permute(1, 2, 3, 0)
        return pts

    def _fractions(self, head: Head, pts: Tensor, patch: int) -> Tensor:
        """Class fractions (K, P, P, P) by nearest sampling at 2x and 2x2x2 averaging."""
        lo = torch.floor(pts.reshape(-1, 3).min(0).values).long() - 1
        hi = torch.ceil(pts.reshape(-1, 3).max(0).values).long() + 2
        shape = torch.tensor(head.classes.shape)
        clo, chi = lo.clamp(min=0), torch.minimum(hi, shape)
        crop = np.zeros(tuple((hi - lo).tolist()), dtype=np.uint8)
        if bool((chi > clo).all()):
            sub = head.classes[clo[0]:chi[0], clo[1]:chi[1], clo[2]:chi[2]]
            o = (clo - lo).tolist()
            crop[o[0]:o[0] + sub.shape[0], o[1]:o[1] + sub.shape[1], o[2]:o[2] + sub.shape[2]] = sub
        vol = torch.from_numpy(crop).to(self.device)
        idx = torch.round(pts - lo.to(pts.dtype)).long().to(self.device)
        for d in range(3):
            idx[..., d].clamp_(0, vol.shape[d] - 1)
        lab = vol[idx[..., 0], idx[..., 1], idx[..., 2]].long()  # (ss, ss, ss)
        onehot = F.one_hot(lab, len(CLASSES)).permute(3, 0, 1, 2).float()
        return F.avg_pool3d(onehot[None], 2)[0]  # (K, P, P, P)

    # -- physics --------------------------------------------------------------------
    def _tissue_values(self, g: torch.Generator) -> dict[str, Tensor]:
        """Per-class parameter means of a virtual subject: {param: (K,)}."""
        out = {}
        for p in ("pd", "r1", "r2s", "r2", "mt"):
            vals = []
            for c in CLASSES:
                pr = self.priors[c][p]
                v = pr.mean + pr.sd * float(torch.randn(1, generator=g))
                vals.append(max(v, 0.0 if p in ("pd", "mt") else 1e-3))
            out[p] = torch.tensor(vals, dtype=torch.float32, device=self.device)
        return out

    def _class_maps(self, values: dict[str, Tensor], present: list[int], shape,
                    g: torch.Generator) -> dict[str, Tensor]:
        """Per-class parameter maps with smooth spatial variation: {param: (Kp, *shape)}."""
        out = {}
        for p in ("pd", "r1", "r2s"):
            spatial = torch.tensor([self.priors[CLASSES[k]][p].spatial for k in present],
                                   device=self.device)
            field_ = smooth_random_field(tuple(shape), control_points=3, batch=len(present),
                                         generator=g).to(self.device)
            out[p] = values[p][present].reshape(-1, 1, 1, 1) * torch.exp(
                spatial.reshape(-1, 1, 1, 1) * field_)
        return out

    def _sample_params(self, sequence: str, n: int, g: torch.Generator) -> dict[str, Tensor]:
        space = SPACES[self.cfg.spaces[sequence]]
        params = space.sample(n, generator=g, dtype=torch.float32)
        if sequence in self.cfg.oversample:
            name, prob = self.cfg.oversample[sequence]
            corner = SPACES[name].sample(n, generator=g, dtype=torch.float32)
            pick = torch.rand(n, generator=g) < float(prob)
            params = {k: torch.where(pick, corner[k], v) for k, v in params.items()}
        return params

    def simulate_patch(self, sequence: str, params: dict[str, Tensor], cmaps: dict[str, Tensor],
                       fractions: Tensor, b1t: Tensor | None = None) -> Tensor:
        """Signed mixture signal ``sum_c f_c S_c`` for N parameter sets: (N, *shape)."""
        model = SEQUENCES[sequence]
        n = next(iter(params.values())).shape[0]
        kw = {k: v.reshape(n, 1, 1, 1, 1).to(self.device) for k, v in params.items()}
        if b1t is not None and "b1t" in model.optional:
            kw["b1t"] = b1t[:, None]
        maps = [cmaps[m][None] for m in model.maps if m in cmaps]
        sig = model.function(*maps, **kw)  # (N, Kp, *shape)
        return (sig * fractions[None]).sum(1)

    def sample(self, generator: torch.Generator, *, sequence: str | None = None,
               head_index: int | None = None) -> dict:
        """One same-subject batch.

        Returns
        -------
        dict with
            ``image`` (N, 1, P, P, P) normalised magnitude images,
            ``target`` (4, P, P, P) soft fractions of background/GM/WM/CSF inside the mask,
            ``physics`` (N, D) encoded parameters, ``params`` dict of (N,) tensors,
            ``sequence`` str, ``mask`` (P, P, P) bool brain mask, ``r1`` (P, P, P) effective R1,
            ``maps`` (4, P, P, P) the true PD, R1 (1/s), R2* (1/s), MTsat (p.u.), each the
            partial-volume weighted mean of the voxel's tissues.
        """
        g = generator
        cfg = self.cfg
        p = cfg.patch
        n = cfg.realisations
        if head_index is None:
            head_index = int(torch.randint(len(self.heads), (1,), generator=g))
        head = self.heads[head_index]
        if sequence is None:
            sequence = cfg.sequences[int(torch.randint(len(cfg.sequences), (1,), generator=g))]
        pts = self._sample_grid(head, g, p)
        frac = self._fractions(head, pts, p)  # (K, P, P, P)
        frac = self._smooth_fractions(frac, g)
        present = [k for k in range(len(CLASSES)) if float(frac[k].sum()) > 0]
        values = self._tissue_values(g)
        cmaps = self._class_maps(values, present, (p, p, p), g)
        cmaps["r2"] = values["r2"][present].reshape(-1, 1, 1, 1).expand(-1, p, p, p)
        cmaps["mt"] = values["mt"][present].reshape(-1, 1, 1, 1).expand(-1, p, p, p)
        fr = frac[present]
        params = self._sample_params(sequence, n, g)
        b1t = 1.0 + cfg.b1t_strength * smooth_random_field((p, p, p), control_points=3, batch=n,
                                                           generator=g).to(self.device)
        signal = self.simulate_patch(sequence, params, cmaps, fr, b1t)
        # whole-brain mean (normaliser): exact from class fractions of the subject's brain
        w = torch.as_tensor(head.brain_class_fraction, dtype=torch.float32, device=self.device)
        pure = self._pure_signals(sequence, params, values)  # (N, K)
        norm = (pure.abs() * w[None]).sum(1)  # (N,)
        # receive field, noise, blur
        bias = torch.exp(cfg.bias_strength * smooth_random_field(
            (p, p, p), control_points=3, batch=n, generator=g)).to(self.device)
        signal = signal * bias
        snr = cfg.snr[0] + (cfg.snr[1] - cfg.snr[0]) * torch.rand(n, generator=g)
        sigma = (norm / snr.to(self.device)).reshape(n, 1, 1, 1)
        image = rician_noise(signal, sigma, generator=g)
        image = self._maybe_blur(image, g)
        # brain mask with skull-stripping imperfection
        brain = frac[_BRAIN_CLASSES].sum(0)
        mask = brain > 0.5
        u = float(torch.rand(1, generator=g))
        if u < cfg.mask_jitter_probability / 2:
            mask = F.max_pool3d(mask[None, None].float(), 3, 1, 1)[0, 0] > 0
        elif u < cfg.mask_jitter_probability:
            mask = -F.max_pool3d(-mask[None, None].float(), 3, 1, 1)[0, 0] > 0
        image = image * mask / norm.reshape(n, 1, 1, 1)
        image = self._jitter_level(image, g)
        tmap = torch.as_tensor(TARGET_OF_CLASS, device=self.device)
        target = torch.zeros(4, p, p, p, device=self.device)
        target.index_add_(0, tmap, frac)
        target[1:] *= mask
        target[0] = 1.0 - target[1:].sum(0)
        maps = true_maps(cmaps, fr)
        return {
            "image": image[:, None].float(),
            "target": target,
            "physics": self.encoder.encode(sequence, params, device=self.device),
            "params": params,
            "sequence": sequence,
            "mask": mask,
            "r1": maps[1],
            "maps": maps,
            "head": head_index,
        }

    def _pure_signals(self, sequence: str, params: dict[str, Tensor],
                      values: dict[str, Tensor]) -> Tensor:
        """Signals of each pure class at its mean parameters: (N, K)."""
        model = SEQUENCES[sequence]
        n = next(iter(params.values())).shape[0]
        kw = {k: v.reshape(n, 1).to(self.device) for k, v in params.items()}
        maps = [values[m][None] for m in model.maps]
        return model.function(*maps, **kw)

    def _jitter_level(self, image: Tensor, g: torch.Generator) -> Tensor:
        """Per-realisation gamma and gain of the normalised images (no draw when off, so
        configurations without it replay their random streams exactly)."""
        cfg, n = self.cfg, image.shape[0]
        shape = (n,) + (1,) * (image.ndim - 1)
        if cfg.gamma_jitter > 0:
            gamma = torch.exp(cfg.gamma_jitter * (2 * torch.rand(n, generator=g) - 1))
            image = image.clamp_min(0) ** gamma.to(image).reshape(shape)
        if cfg.level_jitter > 0:
            gain = torch.exp(cfg.level_jitter * (2 * torch.rand(n, generator=g) - 1))
            image = image * gain.to(image).reshape(shape)
        return image

    def _smooth_fractions(self, frac: Tensor, g: torch.Generator) -> Tensor:
        """Gaussian smoothing of the class fractions, sigma U(0, pv_sigma) voxels, in a
        share ``pv_probability`` of the patches (separable, replicate padding: the
        fractions still sum to 1)."""
        if self.cfg.pv_sigma <= 0:
            return frac
        if (self.cfg.pv_probability < 1.0
                and float(torch.rand(1, generator=g)) >= self.cfg.pv_probability):
            return frac
        sigma = self.cfg.pv_sigma * float(torch.rand(1, generator=g))
        if sigma < 0.2:  # narrower than a voxel: the kernel is a delta
            return frac
        r = max(1, math.ceil(3 * sigma))
        x = torch.arange(-r, r + 1, dtype=frac.dtype, device=frac.device)
        k = torch.exp(-0.5 * (x / sigma) ** 2)
        k = k / k.sum()
        out = frac[:, None]
        for dim in range(3):
            shape = [1, 1, 1, 1, 1]
            shape[2 + dim] = k.numel()
            pad = [0] * 6
            pad[2 * (2 - dim)] = pad[2 * (2 - dim) + 1] = r
            out = F.conv3d(F.pad(out, pad, mode="replicate"), k.reshape(shape))
        return out[:, 0]

    def _maybe_blur(self, image: Tensor, g: torch.Generator) -> Tensor:
        """Through-plane resolution loss (thick slices) along a random axis."""
        if float(torch.rand(1, generator=g)) >= self.cfg.blur_probability:
            return image
        axis = int(torch.randint(3, (1,), generator=g))
        k = [1, 1, 1]
        k[axis] = 2
        low = F.avg_pool3d(image[:, None], kernel_size=k, stride=k)
        return F.interpolate(low, size=image.shape[1:], mode="trilinear", align_corners=False)[:, 0]


def _rotation(angles: Tensor) -> Tensor:
    """Rotation matrix from three Euler angles (radians), float64."""
    cx, cy, cz = torch.cos(angles)
    sx, sy, sz = torch.sin(angles)
    rx = torch.tensor([[1, 0, 0], [0, cx, -sx], [0, sx, cx]], dtype=torch.float64)
    ry = torch.tensor([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]], dtype=torch.float64)
    rz = torch.tensor([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]], dtype=torch.float64)
    return rz @ ry @ rx
