"""3D U-Net with a physics branch injected at two depths, MC dropout and an aleatoric head.

Architecture after Borges et al. (2019, 2021): a small fully connected *physics
branch* maps the encoded acquisition parameters to a vector that is tiled over
space and concatenated (i) to the first encoder level, before the first
down-sampling, and (ii) to the input of the final decoder block. Dropout layers
stay switchable at inference for Monte-Carlo sampling (:func:`enable_mc_dropout`),
and a separate convolutional head predicts the per-voxel, per-class log standard
deviation of logit noise (aleatoric uncertainty, loss attenuation).

With ``physics_dim=0`` the same network has no physics branch: the baseline.

Normalisation (``norm``). Instance norm, the first design, normalises every channel
over the window it is given. A tiled physics vector is constant over space, so the
convolution after its concatenation adds a per-channel constant that the next instance
norm subtracts again: the parameters reach the voxels only through the window's zero
padding, so their effect shrinks as the window grows (measured on the 2700-step model:
mean |logit change| at the window centre between TI 0.6 and 1.2 s is 1.33 for a 48^3
window, 0.29 for 96^3, 0.23 for 160^3), and every output depends on what else the
window holds. Batch norm (``norm="batch"``) normalises with statistics over the batch
during training and with fixed running statistics at inference: the physics shift
survives and the network is the same function whatever the window. ``norm="none"``
drops the normalisation (convolutions with bias, He initialisation): no statistics at
all, so training and inference compute the same function of each voxel's receptive
field whatever the window holds; the input is already scaled by the whole-brain mean.

Injection (``injection``). ``"concat"`` tiles the physics vector and concatenates it
(the papers' design, and that of the models shipped so far). ``"film"`` instead
modulates the normalised features of the first encoder block and of the final decoder
block, the same two depths, per channel: ``norm(x) * (1 + gamma) + beta`` before each
activation (feature-wise linear modulation, Perez et al. 2018; conditional instance
norm). The shift is applied after the normalisation and before a non-linearity, so no
later normalisation can subtract it again, whatever the norm or the window.

Input (``input_transform``). ``"intensity"`` feeds the image as it comes (divided by
its whole-brain mean; the models shipped so far). ``"log-contrast"`` feeds
:func:`log_contrast`: the log-intensity of every brain voxel minus the mean
log-intensity of the brain voxels around it, in boxes of 3, 9 and 27 voxels, plus the
brain mask. A gain of the whole image adds the same constant to every log-intensity
and to every local mean, so these channels are exactly invariant to it, at the mask
border too, and they are fixed functions of a bounded neighbourhood, so they do not
depend on the window either. With ``norm="none"`` the network is then blind to the
input level by construction, as instance norm makes it, without instance norm's
dependence on what the window holds (docs/segmentation.md).

Input dropout (``input_dropout_mode``). The papers drop 5 % of the *input layer*
(acquisition-invariant-segmentation-uncertainty, sec. 2.4): ``"voxel"`` does that,
element-wise dropout of the input voxels. ``"channel"``, the design of the models
shipped so far, is ``Dropout3d``: on a one-channel image it zeroes the *whole* image
with probability p. In training that fed them blank realisations (about one step in
five held one, and its stratification loss pulled the other realisations' features
towards those of an empty image); at inference it blanked whole sliding windows of a
Monte-Carlo sample. :func:`enable_mc_dropout` therefore leaves a channel dropout of a
one-channel input off: it is not a perturbation of the image but its removal.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["PhysicsUNet", "enable_mc_dropout", "log_contrast"]


NORMS = {"instance": lambda c: nn.InstanceNorm3d(c, affine=True),
         "batch": nn.BatchNorm3d,
         "none": lambda c: nn.Identity()}


INJECTIONS = ("concat", "film")

INPUT_TRANSFORMS = ("intensity", "log-contrast")

INPUT_DROPOUT_MODES = ("channel", "voxel")

#: box sizes (voxels) of the local means that :func:`log_contrast` subtracts
LOG_CONTRAST_SCALES = (3, 9, 27)


def _box_mean(x: Tensor, k: int) -> Tensor:
    """Separable k^3 box mean with zero padding (the same divisor everywhere)."""
    p = k // 2
    for dim in range(3):
        size, pad = [1, 1, 1], [0] * 6
        size[dim] = k
        pad[2 * (2 - dim)] = pad[2 * (2 - dim) + 1] = p  # F.pad orders the last dim first
        x = F.avg_pool3d(F.pad(x, pad), tuple(size), stride=1)
    return x


def log_contrast(image: Tensor, scales: tuple[int, ...] = LOG_CONTRAST_SCALES) -> Tensor:
    """Gain-invariant local contrast of a skull-stripped image.

    Brain voxels are those with a positive intensity (the networks' input is zero
    outside the brain mask). For each box size k: ``log(x) - mean_k(log x)`` on brain
    voxels, where ``mean_k`` averages over the brain voxels of the k^3 box around each
    voxel (zero outside the brain), followed by the brain mask itself.

    Parameters
    ----------
    image : tensor (B, C, X, Y, Z)

    Returns
    -------
    tensor (B, C * (len(scales) + 1), X, Y, Z)
    """
    mask = (image > 0).to(image.dtype)
    logi = torch.log(image.clamp_min(torch.finfo(image.dtype).tiny)) * mask
    channels = []
    for k in scales:
        local = _box_mean(logi, k) / _box_mean(mask, k).clamp_min(1e-6)
        channels.append((logi - local) * mask)
    return torch.cat([*channels, mask], dim=1)


class _Block(nn.Sequential):
    """conv-norm-act twice (+ dropout); with ``film`` (B, 2, 2, cout) the output of the
    k-th norm becomes ``x * (1 + film[:, k, 0]) + film[:, k, 1]`` before its activation.
    Sub-module indices are those of the plain Sequential, so shipped weights load."""

    _NORM_AT = (1, 4)

    def __init__(self, cin: int, cout: int, dropout: float = 0.0, norm: str = "instance"):
        bias = norm == "none"  # a norm's own shift makes a convolution bias redundant
        layers: list[nn.Module] = [
            nn.Conv3d(cin, cout, 3, padding=1, bias=bias),
            NORMS[norm](cout),
            nn.LeakyReLU(0.01, inplace=True),
            nn.Conv3d(cout, cout, 3, padding=1, bias=bias),
            NORMS[norm](cout),
            nn.LeakyReLU(0.01, inplace=True),
        ]
        if norm == "none":  # He initialisation keeps the activations' scale without a norm
            for conv in (layers[0], layers[3]):
                nn.init.kaiming_normal_(conv.weight, a=0.01, nonlinearity="leaky_relu")
                nn.init.zeros_(conv.bias)
        if dropout > 0:
            layers.append(nn.Dropout3d(dropout))
        super().__init__(*layers)

    def forward(self, x: Tensor, film: Tensor | None = None) -> Tensor:
        for i, layer in enumerate(self):
            x = layer(x)
            if film is not None and i in self._NORM_AT:
                k = self._NORM_AT.index(i)
                gamma = film[:, k, 0, :, None, None, None]
                beta = film[:, k, 1, :, None, None, None]
                x = x * (1 + gamma) + beta
        return x


class PhysicsUNet(nn.Module):
    """Physics-aware 3D U-Net.

    Parameters
    ----------
    in_channels : int
        Image channels.
    n_classes : int
        Output classes (background, GM, WM, CSF).
    channels : tuple of int
        Feature channels per level (the number of levels is its length).
    physics_dim : int
        Length of the encoded parameter vector; 0 builds the baseline (no branch).
    physics_hidden : int
        Width of the two fully connected layers of the physics branch.
    physics_channels : int
        Channels the physics vector adds where it is tiled.
    dropout : float
        Dropout3d probability after every block below the first level (MC dropout).
    input_dropout : float
        Dropout probability on the input (paper: 0.05).
    aleatoric : bool
        Add the log-sigma head.
    norm : {"instance", "batch", "none"}
        Normalisation in every block (module docstring); "instance" is the design of the
        models shipped so far, whose manifests do not name it.
    injection : {"concat", "film"}
        How the physics vector enters at the two depths (module docstring); "concat" is
        the design of the models shipped so far.
    input_transform : {"intensity", "log-contrast"}
        What the first block sees (module docstring); "intensity" is the design of the
        models shipped so far.
    input_dropout_mode : {"channel", "voxel"}
        ``Dropout3d`` of whole input channels (the models shipped so far; on a
        one-channel image it blanks the image) or element-wise dropout of the input
        voxels (the papers' input-layer dropout); module docstring.
    """

    def __init__(self, in_channels: int = 1, n_classes: int = 4,
                 channels: tuple[int, ...] = (8, 16, 32, 64), physics_dim: int = 10,
                 physics_hidden: int = 16, physics_channels: int = 8, dropout: float = 0.1,
                 input_dropout: float = 0.05, aleatoric: bool = True, norm: str = "instance",
                 injection: str = "concat", input_transform: str = "intensity",
                 input_dropout_mode: str = "channel"):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {sorted(NORMS)}, not {norm!r}")
        if injection not in INJECTIONS:
            raise ValueError(f"injection must be one of {list(INJECTIONS)}, not {injection!r}")
        if input_transform not in INPUT_TRANSFORMS:
            raise ValueError(f"input_transform must be one of {list(INPUT_TRANSFORMS)}, "
                             f"not {input_transform!r}")
        if input_dropout_mode not in INPUT_DROPOUT_MODES:
            raise ValueError(f"input_dropout_mode must be one of {list(INPUT_DROPOUT_MODES)}, "
                             f"not {input_dropout_mode!r}")
        self.config = {
            "in_channels": in_channels, "n_classes": n_classes, "channels": list(channels),
            "physics_dim": physics_dim, "physics_hidden": physics_hidden,
            "physics_channels": physics_channels, "dropout": dropout,
            "input_dropout": input_dropout, "aleatoric": aleatoric, "norm": norm,
            "injection": injection,
        }
        if input_transform != "intensity":  # shipped manifests do not name it
            self.config["input_transform"] = input_transform
        if input_dropout_mode != "channel":  # shipped manifests do not name it
            self.config["input_dropout_mode"] = input_dropout_mode
        self.log_input = input_transform == "log-contrast"
        self.film = injection == "film" and physics_dim > 0
        # concat: channels tiled at the two depths; film: (gamma, beta) for the two norms
        # of the two modulated blocks
        pc = physics_channels if physics_dim > 0 and not self.film else 0
        out = 8 * channels[0] if self.film else pc
        self.physics_dim = physics_dim
        self.physics = (
            nn.Sequential(nn.Linear(physics_dim, physics_hidden), nn.ReLU(inplace=True),
                          nn.Linear(physics_hidden, physics_hidden), nn.ReLU(inplace=True),
                          nn.Linear(physics_hidden, out))
            if physics_dim > 0 else None
        )
        if self.film:  # start as the identity modulation
            nn.init.zeros_(self.physics[-1].weight)
            nn.init.zeros_(self.physics[-1].bias)
        drop = nn.Dropout if input_dropout_mode == "voxel" else nn.Dropout3d
        self.input_dropout = drop(input_dropout) if input_dropout > 0 else nn.Identity()
        #: a channel dropout of a one-channel input removes the image (module docstring)
        self.input_dropout_blanks = drop is nn.Dropout3d and in_channels == 1
        c = list(channels)
        self.enc = nn.ModuleList()
        first_in = in_channels * (len(LOG_CONTRAST_SCALES) + 1) if self.log_input else in_channels
        self.enc.append(_Block(first_in, c[0], norm=norm))
        for i in range(1, len(c)):
            cin = c[i - 1] + (pc if i == 1 else 0)
            self.enc.append(_Block(cin, c[i], dropout, norm))
        self.dec = nn.ModuleList()
        for i in range(len(c) - 2, -1, -1):
            skip = c[i] + (pc if i == 0 else 0)
            extra = pc if i == 0 else 0  # second injection: before the final block
            self.dec.append(_Block(c[i + 1] + skip + extra, c[i], dropout if i > 0 else 0.0,
                                   norm))
        self.head = nn.Conv3d(c[0], n_classes, 1)
        self.sigma_head = (
            nn.Sequential(nn.Conv3d(c[0], c[0], 3, padding=1), nn.LeakyReLU(0.01, inplace=True),
                          nn.Conv3d(c[0], n_classes, 1))
            if aleatoric else None
        )

    def _tile(self, vec: Tensor | None, like: Tensor) -> list[Tensor]:
        if vec is None or self.film:
            return []
        return [vec[:, :, None, None, None].expand(-1, -1, *like.shape[2:])]

    def forward(self, image: Tensor, physics: Tensor | None = None
                ) -> tuple[Tensor, Tensor | None, Tensor]:
        """Segment a batch.

        Parameters
        ----------
        image : tensor (B, C, X, Y, Z)
            Spatial sizes divisible by ``2**(levels-1)``.
        physics : tensor (B, physics_dim), optional
            Encoded acquisition parameters (required unless the baseline).

        Returns
        -------
        logits : tensor (B, n_classes, X, Y, Z)
        log_sigma : tensor (B, n_classes, X, Y, Z) or None
        features : tensor (B, channels[0], X, Y, Z)
            Final feature maps (for the stratification loss).
        """
        vec = None
        if self.physics is not None:
            if physics is None:
                raise ValueError("this model has a physics branch: pass the encoded parameters")
            vec = self.physics(physics.to(image.dtype))
        film_first = film_last = None
        if self.film:
            films = vec.view(vec.shape[0], 2, 2, 2, -1)  # (B, block, norm, gamma/beta, C)
            film_first, film_last = films[:, 0], films[:, 1]
        x = self.input_dropout(image)  # before the transform: its 1/(1-p) is a gain
        if self.log_input:
            x = log_contrast(x)
        skips = []
        for i, block in enumerate(self.enc):
            if i > 0:
                x = F.max_pool3d(x, 2)
            x = block(x, film_first if i == 0 else None)
            if i == 0:
                x = torch.cat([x, *self._tile(vec, x)], dim=1)
            skips.append(x)
        x = skips.pop()
        for j, block in enumerate(self.dec):
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[2:], mode="trilinear", align_corners=False)
            parts = [x, skip]
            last = j == len(self.dec) - 1
            if last:
                parts += self._tile(vec, skip)
            x = block(torch.cat(parts, dim=1), film_last if last else None)
        logits = self.head(x)
        log_sigma = self.sigma_head(x) if self.sigma_head is not None else None
        return logits, log_sigma, x


def enable_mc_dropout(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Put only the dropout layers in training mode (Monte-Carlo dropout at inference).

    The input dropout of a :class:`PhysicsUNet` whose input dropout would blank the
    whole image (``Dropout3d`` of a one-channel input, the shipped models) stays off:
    a blank window is not a sample of the network's answer for that image."""
    model.eval()
    skip = {id(m.input_dropout) for m in model.modules()
            if isinstance(m, PhysicsUNet) and m.input_dropout_blanks}
    for m in model.modules():
        if isinstance(m, nn.Dropout | nn.Dropout3d) and id(m) not in skip:
            m.train(enabled)
    return model
