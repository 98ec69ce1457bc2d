"""The displacement network of the refinement paper (sec. 3.1) and its input contract.

Architecture (:class:`DisplacementNet`):

* two encoder branches, one for the photo crop (3 channels) and one for the concatenated
  render passes of the current estimate (textured RGB 3, depth 1, normals 3, template
  coordinates 3, mask 1 = 11 channels by default), each built like ResNet-50's stem and
  first stage (7x7 convolution, then bottleneck blocks) with stride 1 everywhere and no
  max-pooling, so features keep the crop's resolution;
* the two feature maps are concatenated, projected to the hourglass width, and fed to a
  stacked hourglass network (Newell et al.) with intermediate supervision: every stack
  predicts a 2-channel displacement field; the last stack's output is the prediction.

Units: the displacement is predicted per crop pixel, render -> photo, in crop pixels
divided by the crop size (``flow_crop_px / S``), so ``x_photo = x_render + S * pred``.

Input contract (shared by training data and the predictor, so they cannot drift apart):

* :func:`crop_window` -- square window around the *rendered* person (bounding box of
  the render mask, enlarged by ``scale``), integer-aligned, may extend past the image;
* :func:`tile_window` -- a part of that window, for an S x S crop at a finer resolution;
* :func:`crop_resize` / :func:`crop_passes` -- resample a full image into the window at
  ``S x S`` (area averaging when shrinking, bilinear when enlarging; zeros outside the
  image). Surface passes are resampled premultiplied by coverage and divided by it, so
  silhouette pixels keep surface values instead of blending with the empty background;
* :func:`encode_photo` / :func:`encode_render` -- tensors the network takes;
* :func:`uncrop_flow` -- a crop prediction back to a full-image field in pixels.

The same contract on tensors of any device, so that refinement on a GPU crops there
(:func:`resize_tensor`, :func:`crop_resize_tensor`, :func:`crop_passes_tensor`, :func:`encode_render_tensor`,
:func:`uncrop_flow_tensor`, :func:`mask_boxes`): each resampling is a product with a small
separable weight matrix (:func:`resample_matrix`), equal to OpenCV's area and bilinear
resizing up to float rounding (OpenCV's remap quantizes positions to 1/32 px; these do not).

Loss (:func:`displacement_loss`): eq. 3 of the paper -- the L1 distance between predicted
and true fields on rendered pixels, ``1/(WH) sum m |f_hat - f|_1``, averaged over the
batch and summed over the stacks.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "NetConfig",
    "DisplacementNet",
    "displacement_loss",
    "confidence_loss",
    "training_loss",
    "endpoint_error",
    "RENDER_PASS_CHANNELS",
    "render_channels",
    "select_render_passes",
    "CropWindow",
    "crop_window",
    "tile_window",
    "crop_resize",
    "crop_passes",
    "encode_photo",
    "encode_render",
    "uncrop_flow",
    "extend_nearest",
    "resample_matrix",
    "mask_boxes",
    "window_of_box",
    "resize_tensor",
    "crop_resize_tensor",
    "crop_passes_tensor",
    "encode_render_tensor",
    "uncrop_flow_tensor",
]

INITIAL_SCALE = 0.01  # an untrained confidence head's expected error: ~1 crop pixel of 96

# channel count of each render pass the network may take, in the order they are stacked
RENDER_PASS_CHANNELS: dict[str, int] = {"rgb": 3, "depth": 1, "normal": 3, "template": 3, "mask": 1}
FLOW_PRIOR_CHANNELS = 3  # a flow-prior network's extra render channels: flow (2), its confidence


def render_channels(passes: tuple[str, ...]) -> int:
    return sum(RENDER_PASS_CHANNELS[p] for p in passes)


def select_render_passes(render: Tensor, have: tuple[str, ...], want: tuple[str, ...]) -> Tensor:
    """The channels of the passes ``want`` from a render input (..., C, S, S) encoded with
    the passes ``have`` (see :func:`encode_render`): one sample set serves networks built
    for different passes."""
    missing = [p for p in want if p not in have]
    if missing:
        raise ValueError(f"render passes {missing} are not in the input's passes {have}")
    start, spans = 0, {}
    for p in have:
        spans[p] = slice(start, start + RENDER_PASS_CHANNELS[p])
        start += RENDER_PASS_CHANNELS[p]
    return torch.cat([render[..., spans[p], :, :] for p in want], dim=-3)


@dataclass(frozen=True)
class NetConfig:
    """Shape of the displacement network (``configs/nets/*.toml``, section ``[net]``).

    crop_size: S, the square input/output size in pixels.
    crop_scale: the crop window is the render mask's bounding box enlarged by this factor.
    render_passes: which passes the render branch takes (subset of rgb, depth, normal,
      template, mask; e.g. drop "rgb" for the paper's "w/o texture" ablation).
    stem_width / stem_kernel: the first convolution of each branch (ResNet-50: 64, 7x7).
    encoder_width / encoder_out / encoder_blocks: bottleneck blocks of the first stage
      (ResNet-50: 64 -> 256, 3 blocks).
    hg_width: channels inside the hourglasses; hg_stacks: number of hourglasses (paper: 4);
    hg_depth: poolings per hourglass (S must be divisible by 2**hg_depth);
    hg_blocks: residual modules per hourglass level; head_blocks: after each hourglass.
    norm: "batch" or "group" (group norm, 8 groups; steadier with tiny batches).
    confidence: a head on the last stack's (detached) features predicts each pixel's expected
      error (the log of a Laplace scale, in the displacement's units), trained by
      :func:`confidence_loss`; the predictor turns it into the target weight
      (:class:`~.predictor.LearnedPredictor`). It leaves the displacement's training as it is.
    flow_prior: the render branch also takes DIS optical flow from the render to the photo
      (:class:`mvcap.displace.FlowPredictor`, in crop pixels / S) and its forward-backward
      confidence, 3 more channels; the network predicts the correction to that flow, which
      keeps flow's full-resolution precision where flow is right.
    """

    crop_size: int = 256
    crop_scale: float = 1.2
    render_passes: tuple[str, ...] = ("rgb", "depth", "normal", "template", "mask")
    stem_width: int = 64
    stem_kernel: int = 7
    encoder_width: int = 64
    encoder_out: int = 256
    encoder_blocks: int = 3
    hg_width: int = 256
    hg_stacks: int = 4
    hg_depth: int = 4
    hg_blocks: int = 1
    head_blocks: int = 1
    norm: str = "batch"
    confidence: bool = False
    flow_prior: bool = False

    def __post_init__(self):
        unknown = [p for p in self.render_passes if p not in RENDER_PASS_CHANNELS]
        if unknown or not self.render_passes or len(set(self.render_passes)) != len(self.render_passes):
            raise ValueError(
                f"net.render_passes must be distinct names from {list(RENDER_PASS_CHANNELS)}, got {self.render_passes}"
            )
        if "mask" not in self.render_passes:
            raise ValueError("net.render_passes must include 'mask' (the network needs to know the silhouette)")
        for name in (
            "crop_size",
            "stem_width",
            "stem_kernel",
            "encoder_width",
            "encoder_out",
            "encoder_blocks",
            "hg_width",
            "hg_stacks",
            "hg_depth",
            "hg_blocks",
            "head_blocks",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"net.{name} must be >= 1, got {getattr(self, name)}")
        if self.crop_size % (2**self.hg_depth):
            raise ValueError(f"net.crop_size={self.crop_size} must be divisible by 2**hg_depth={2**self.hg_depth}")
        if self.stem_kernel % 2 == 0:
            raise ValueError(f"net.stem_kernel must be odd, got {self.stem_kernel}")
        if self.norm not in ("batch", "group"):
            raise ValueError(f"net.norm must be 'batch' or 'group', got {self.norm!r}")
        if not self.crop_scale >= 1.0:
            raise ValueError(f"net.crop_scale must be >= 1, got {self.crop_scale}")

    @property
    def render_in_channels(self) -> int:
        return render_channels(self.render_passes) + (FLOW_PRIOR_CHANNELS if self.flow_prior else 0)


# ==========================================================================================
# building blocks
# ==========================================================================================
def _norm(kind: str, ch: int) -> nn.Module:
    if kind == "group":
        return nn.GroupNorm(math.gcd(8, ch), ch)
    return nn.BatchNorm2d(ch)


class Bottleneck(nn.Module):
    """ResNet bottleneck (1x1 -> 3x3 -> 1x1, stride 1) with a projected skip when widths differ."""

    def __init__(self, cin: int, mid: int, cout: int, norm: str):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False), _norm(norm, mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, padding=1, bias=False), _norm(norm, mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, cout, 1, bias=False), _norm(norm, cout),
        )  # fmt: skip
        self.skip = (
            nn.Identity() if cin == cout else nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), _norm(norm, cout))
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.body(x) + self.skip(x))


class Encoder(nn.Module):
    """ResNet-50 stem + first stage, stride 1, no max-pool: (B, cin, S, S) -> (B, out, S, S)."""

    def __init__(self, cin: int, cfg: NetConfig):
        super().__init__()
        k = cfg.stem_kernel
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cfg.stem_width, k, padding=k // 2, bias=False),
            _norm(cfg.norm, cfg.stem_width),
            nn.ReLU(inplace=True),
        ]
        c = cfg.stem_width
        for _ in range(cfg.encoder_blocks):
            layers.append(Bottleneck(c, cfg.encoder_width, cfg.encoder_out, cfg.norm))
            c = cfg.encoder_out
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


def _residual(ch: int, n: int, norm: str) -> nn.Sequential:
    return nn.Sequential(*[Bottleneck(ch, max(ch // 2, 1), ch, norm) for _ in range(n)])


class Hourglass(nn.Module):
    """One hourglass: recursive pool -> residual -> (inner hourglass) -> upsample + skip."""

    def __init__(self, depth: int, ch: int, blocks: int, norm: str):
        super().__init__()
        self.up = _residual(ch, blocks, norm)
        self.low1 = _residual(ch, blocks, norm)
        self.low2 = Hourglass(depth - 1, ch, blocks, norm) if depth > 1 else _residual(ch, blocks, norm)
        self.low3 = _residual(ch, blocks, norm)

    def forward(self, x: Tensor) -> Tensor:
        up = self.up(x)
        low = self.low3(self.low2(self.low1(F.max_pool2d(x, 2))))
        return up + F.interpolate(low, size=up.shape[-2:], mode="nearest")


class DisplacementNet(nn.Module):
    """Two encoders + stacked hourglass; see the module docstring.

    forward(photo (B, 3, S, S), render (B, C_r, S, S)) -> list of hg_stacks tensors
    (B, 2, S, S): the displacement in crop pixels / S, one per stack (the last one is the
    prediction).
    """

    def __init__(self, cfg: NetConfig = NetConfig()):
        super().__init__()
        self.cfg = cfg
        self.photo_encoder = Encoder(3, cfg)
        self.render_encoder = Encoder(cfg.render_in_channels, cfg)
        w = cfg.hg_width
        self.fuse = nn.Sequential(
            nn.Conv2d(2 * cfg.encoder_out, w, 1, bias=False),
            _norm(cfg.norm, w),
            nn.ReLU(inplace=True),
        )
        self.hourglasses = nn.ModuleList(
            Hourglass(cfg.hg_depth, w, cfg.hg_blocks, cfg.norm) for _ in range(cfg.hg_stacks)
        )
        self.heads = nn.ModuleList(
            nn.Sequential(
                _residual(w, cfg.head_blocks, cfg.norm),
                nn.Conv2d(w, w, 1, bias=False),
                _norm(cfg.norm, w),
                nn.ReLU(inplace=True),
            )  # fmt: skip
            for _ in range(cfg.hg_stacks)
        )
        self.outputs = nn.ModuleList(nn.Conv2d(w, 2, 1) for _ in range(cfg.hg_stacks))
        self.merge_features = nn.ModuleList(nn.Conv2d(w, w, 1) for _ in range(cfg.hg_stacks - 1))
        self.merge_preds = nn.ModuleList(nn.Conv2d(2, w, 1) for _ in range(cfg.hg_stacks - 1))
        for out in self.outputs:  # start from "no displacement"
            nn.init.normal_(out.weight, std=1e-3)
            nn.init.zeros_(out.bias)
        if cfg.confidence:
            # reads the last stack's features detached: learning the confidence never changes
            # the displacement (its loss would otherwise pull the shared features its way)
            self.scale_head = nn.Sequential(nn.Conv2d(w, 32, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(32, 1, 1))
            nn.init.zeros_(self.scale_head[2].weight)  # start from one expected error everywhere:
            nn.init.constant_(self.scale_head[2].bias, math.log(INITIAL_SCALE))  # about a crop pixel
        # recompute encoders and hourglass stacks in the backward pass instead of storing
        # their activations (~6 GB per 256x256 sample in float32 for the paper net); not
        # part of the config: it changes memory and time, not the function
        self.grad_checkpointing = False

    def _run(self, fn, *args):
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def _stack(self, i: int, x: Tensor) -> Tensor:
        return self.heads[i](self.hourglasses[i](x))

    def forward(self, photo: Tensor, render: Tensor) -> list[Tensor]:
        return self.forward_with_scale(photo, render)[0]

    def forward_with_scale(self, photo: Tensor, render: Tensor) -> tuple[list[Tensor], Tensor | None]:
        """The stacks' predictions (see the class docstring) and, with ``cfg.confidence``, the
        log expected error (B, 1, S, S) of the last one (None without)."""
        S = self.cfg.crop_size
        cr = self.cfg.render_in_channels
        if photo.ndim != 4 or photo.shape[1] != 3 or render.ndim != 4 or render.shape[1] != cr:
            raise ValueError(
                f"DisplacementNet expects photo (B, 3, S, S) and render (B, {cr}, S, S) "
                f"(passes {self.cfg.render_passes}); "
                f"got {tuple(photo.shape)} and {tuple(render.shape)}"
            )
        if photo.shape[0] != render.shape[0] or photo.shape[-2:] != render.shape[-2:]:
            raise ValueError(f"photo {tuple(photo.shape)} and render {tuple(render.shape)} must match in B, H, W")
        if photo.shape[-2] % (2**self.cfg.hg_depth) or photo.shape[-1] % (2**self.cfg.hg_depth):
            raise ValueError(
                f"input size {tuple(photo.shape[-2:])} must be divisible by "
                f"{2**self.cfg.hg_depth} (net built for S={S})"
            )
        feats = [self._run(self.photo_encoder, photo), self._run(self.render_encoder, render)]
        x = self.fuse(torch.cat(feats, dim=1))
        preds = []
        for i in range(self.cfg.hg_stacks):
            y = self._run(self._stack, i, x)
            pred = self.outputs[i](y)
            preds.append(pred)
            if i + 1 < self.cfg.hg_stacks:
                x = x + self.merge_features[i](y) + self.merge_preds[i](pred)
        return preds, (self.scale_head(y.detach()) if self.cfg.confidence else None)

    def with_confidence(self) -> DisplacementNet:
        """A copy with a confidence head (untrained: one expected error everywhere) and these
        weights everywhere else; itself when it has one."""
        if self.cfg.confidence:
            return self
        net = DisplacementNet(dataclasses.replace(self.cfg, confidence=True))
        missing, unexpected = net.load_state_dict(self.state_dict(), strict=False)
        assert not unexpected and all(k.startswith("scale_head.") for k in missing), (missing, unexpected)
        return net

    def with_flow_prior(self) -> DisplacementNet:
        """A copy that takes the flow prior (``cfg.flow_prior``) and starts as flow itself:
        these weights, zero weights on the prior's input channels and zero outputs (no
        correction yet); itself when it takes the prior."""
        if self.cfg.flow_prior:
            return self
        net = DisplacementNet(dataclasses.replace(self.cfg, flow_prior=True))
        state = self.state_dict()
        first = "render_encoder.layers.0.weight"
        w = state[first]
        state[first] = torch.cat([w, w.new_zeros((w.shape[0], FLOW_PRIOR_CHANNELS) + w.shape[2:])], 1)
        for k in list(state):
            if k.startswith("outputs."):
                state[k] = torch.zeros_like(state[k])
        net.load_state_dict(state)
        return net


# ==========================================================================================
# loss and metric
# ==========================================================================================
def _check_target(preds, target: Tensor, mask: Tensor):
    if target.ndim != 4 or target.shape[1] != 2:
        raise ValueError(f"target must be (B, 2, S, S), got {tuple(target.shape)}")
    if mask.shape != (target.shape[0], 1, *target.shape[-2:]):
        raise ValueError(
            f"mask must be (B, 1, S, S) = {(target.shape[0], 1, *target.shape[-2:])}, got {tuple(mask.shape)}"
        )
    for p in preds:
        if p.shape != target.shape:
            raise ValueError(f"prediction {tuple(p.shape)} does not match target {tuple(target.shape)}")


def displacement_loss(preds: list[Tensor] | Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Eq. 3 summed over stacks: ``sum_stacks mean_b 1/(HW) sum_xy m |f_hat - f|_1``.

    preds: list of (B, 2, S, S) (or one tensor); target (B, 2, S, S); mask (B, 1, S, S) in
    {0, 1} (rendered pixels). Unmasked pixels contribute nothing (their values may be
    anything, even NaN).
    """
    if isinstance(preds, Tensor):
        preds = [preds]
    _check_target(preds, target, mask)
    m = mask.to(target.dtype) > 0
    total = target.new_zeros(())
    for p in preds:
        err = torch.where(m, (p.float() - target).abs(), torch.zeros((), dtype=target.dtype, device=target.device))
        total = total + err.sum(dim=1, keepdim=True).mean()
    return total


def confidence_loss(log_scale: Tensor, pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Negative log-likelihood of the last stack's error under a Laplace distribution of scale
    ``exp(log_scale)`` per pixel, over masked pixels: ``mean_m sum_c |e_c| / b + log b``.
    The error is detached: the head learns how wrong the displacement is without changing
    it. log_scale, mask (B, 1, S, S); pred, target (B, 2, S, S)."""
    _check_target([pred], target, mask)
    m = mask[:, 0] > 0
    if not m.any():
        return log_scale.sum() * 0
    err = (pred.detach().float() - target).abs().sum(1)[m]
    s = log_scale[:, 0].float()[m]
    return (err * torch.exp(-s) + 2 * s).mean()


def training_loss(preds: list[Tensor], log_scale: Tensor | None, target: Tensor, mask: Tensor) -> Tensor:
    """What training minimises: :func:`displacement_loss`, plus :func:`confidence_loss` for a
    network with a confidence head (``log_scale`` from :meth:`DisplacementNet.forward_with_scale`)."""
    loss = displacement_loss(preds, target, mask)
    if log_scale is not None:
        loss = loss + confidence_loss(log_scale, preds[-1], target, mask)
    return loss


@torch.no_grad()
def endpoint_error(pred: Tensor, target: Tensor, mask: Tensor, scale: float | Tensor = 1.0) -> Tensor:
    """Mean end-point error over masked pixels: mean_m ||pred - target||_2 * scale
    (scale converts the network's units to pixels, e.g. S for crop pixels). Scalar."""
    _check_target([pred], target, mask)
    m = mask[:, 0] > 0
    d = (pred.float() - target).norm(dim=1)
    if torch.is_tensor(scale) and scale.ndim == 1:
        d = d * scale.to(d)[:, None, None]
    else:
        d = d * scale
    return d[m].mean() if m.any() else d.new_zeros(())


# ==========================================================================================
# input contract: crop window, resampling, encoding, un-cropping
# ==========================================================================================
@dataclass(frozen=True)
class CropWindow:
    """A square window of the full image: pixel columns x0 .. x0+size-1, rows y0 ..
    y0+size-1 (integers, may lie outside the image). Crop pixel (i, j) of an S x S crop
    has its centre at full-image pixel ``(x0 - 0.5 + (j + 0.5) * size / S, y0 - 0.5 +
    (i + 0.5) * size / S)`` (pixel centres at integers)."""

    x0: int
    y0: int
    size: int

    def crop_to_full(self, uv_crop: np.ndarray, S: int) -> np.ndarray:
        s = self.size / S
        return np.asarray(uv_crop, np.float64) * s + np.array([self.x0, self.y0]) - 0.5 + 0.5 * s

    def full_to_crop(self, uv_full: np.ndarray, S: int) -> np.ndarray:
        s = self.size / S
        return (np.asarray(uv_full, np.float64) - np.array([self.x0, self.y0]) + 0.5 - 0.5 * s) / s


def crop_window(mask: np.ndarray, scale: float = 1.2, min_size: int = 16) -> CropWindow | None:
    """Square window around the True pixels of ``mask`` (H, W): the bounding box's longer
    side times ``scale``, centred on the box. None when the mask is empty."""
    mask = np.asarray(mask)
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return window_of_box((rows[0], rows[-1], cols[0], cols[-1]), scale, min_size)


def window_of_box(box, scale: float = 1.2, min_size: int = 16) -> CropWindow:
    """:func:`crop_window` from the mask's bounding box ``(y_lo, y_hi, x_lo, x_hi)``
    (inclusive pixel rows and columns)."""
    y_lo, y_hi, x_lo, x_hi = (int(b) for b in box)
    side = max(y_hi - y_lo + 1, x_hi - x_lo + 1) * scale
    size = max(int(math.ceil(side)), min_size)
    cx, cy = (x_lo + x_hi + 1) / 2.0, (y_lo + y_hi + 1) / 2.0  # in pixel-edge coordinates
    return CropWindow(int(round(cx - size / 2.0)), int(round(cy - size / 2.0)), size)


def tile_window(mask: np.ndarray, side: int, rng: np.random.Generator) -> CropWindow:
    """A square window of ``side`` pixels centred on a random True pixel of ``mask`` (H, W).

    With ``side`` = the whole-body window's side / zoom, an S x S crop of the tile is a patch
    of what the coarse-to-fine pass sees at zoom x S (the network is fully convolutional), so
    tiles teach that pass's resolution at the training crop size."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        raise ValueError("the mask is empty: no pixel to centre a tile on")
    i = int(rng.integers(len(ys)))
    return CropWindow(int(xs[i]) - side // 2, int(ys[i]) - side // 2, int(side))


def crop_resize(image: np.ndarray, win: CropWindow, S: int) -> np.ndarray:
    """(H, W[, C]) float32 image -> (S, S[, C]) crop of window ``win`` (zeros outside the
    image); area averaging when shrinking, bilinear when enlarging."""
    image = np.asarray(image)
    H, W = image.shape[:2]
    L = win.size
    out = np.zeros((L, L) + image.shape[2:], dtype=np.float32)
    xa, xb = max(win.x0, 0), min(win.x0 + L, W)
    ya, yb = max(win.y0, 0), min(win.y0 + L, H)
    if xa < xb and ya < yb:
        out[ya - win.y0 : yb - win.y0, xa - win.x0 : xb - win.x0] = image[ya:yb, xa:xb]
    if L == S:
        return out
    interp = cv2.INTER_AREA if L > S else cv2.INTER_LINEAR
    C = out.shape[2] if out.ndim == 3 else 0
    if C <= 4:
        res = cv2.resize(out, (S, S), interpolation=interp)
        return res.reshape((S, S) + out.shape[2:])
    return np.concatenate(
        [cv2.resize(out[..., c : c + 4], (S, S), interpolation=interp).reshape(S, S, -1) for c in range(0, C, 4)],
        axis=-1,
    )


def crop_passes(surface: np.ndarray, mask: np.ndarray, win: CropWindow, S: int) -> tuple[np.ndarray, np.ndarray]:
    """Resample surface attributes defined on the silhouette without blending in the
    background: ``crop(surface * m) / crop(m)``.

    surface: (H, W, C) float (any values off the mask are ignored); mask: (H, W) bool.
    Returns ``(values (S, S, C), coverage (S, S))``; values are 0 where coverage is 0.
    """
    m = np.asarray(mask, np.float32)
    cov = crop_resize(m, win, S)
    vals = crop_resize(np.asarray(surface, np.float32) * m[..., None], win, S)
    safe = np.where(cov > 1e-6, cov, 1.0)[..., None]
    vals = np.where(cov[..., None] > 1e-6, vals / safe, 0.0).astype(np.float32)
    return vals, cov.astype(np.float32)


def encode_photo(photo_crop) -> Tensor:
    """(S, S, 3) uint8 or float in [0, 255], an array or a tensor (kept on its device) ->
    (3, S, S) float32 in [-1, 1]."""
    if isinstance(photo_crop, Tensor):
        x = photo_crop.to(torch.float32)
    else:
        x = torch.from_numpy(np.ascontiguousarray(photo_crop, dtype=np.float32))
    return (x / 127.5 - 1.0).permute(2, 0, 1).contiguous()


def encode_render(passes: dict[str, np.ndarray], coverage: np.ndarray, render_passes: tuple[str, ...]) -> Tensor:
    """Render passes of a crop -> the render branch's input (C_r, S, S) float32.

    passes: name -> (S, S, c) crop values (from :func:`crop_passes`: rgb in [0, 1], depth in
    metres, unit normals, template coordinates in metres); coverage (S, S) in [0, 1].
    Encoding: rgb * 2 - 1; depth minus its mean on the mask (metres), 0 off the mask;
    normals and template as they are; mask = coverage.
    """
    inside = coverage > 0.5
    chans = []
    for name in render_passes:
        if name == "mask":
            chans.append(coverage[..., None].astype(np.float32))
            continue
        v = np.asarray(passes[name], np.float32).reshape(coverage.shape + (-1,))
        if name == "rgb":
            v = np.where(coverage[..., None] > 0, v * 2.0 - 1.0, 0.0)
        elif name == "depth":
            ref = (
                float(v[inside, 0].mean())
                if inside.any()
                else (float(v[coverage > 0, 0].mean()) if (coverage > 0).any() else 0.0)
            )
            v = np.where(coverage[..., None] > 0, v - ref, 0.0)
        chans.append(v.astype(np.float32))
    x = np.concatenate(chans, axis=-1)
    return torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1).contiguous()


def extend_nearest(field: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """field (H, W, C) defined on ``mask`` (H, W) bool (not empty) -> the nearest on-mask
    value everywhere."""
    _, label = cv2.distanceTransformWithLabels((~mask).astype(np.uint8), cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
    ys, xs = np.nonzero(mask)
    at = np.zeros(int(label.max()) + 1, np.int64)
    at[label[ys, xs]] = np.arange(len(ys))
    nearest = at[label]
    return field[ys[nearest], xs[nearest]]


def uncrop_flow(pred: np.ndarray, win: CropWindow, image_size: tuple[int, int]) -> np.ndarray:
    """A crop prediction (S, S, C) in crop pixels / S (the displacement, C = 2, and any other
    channels in those units) -> full-image field (H, W, C) in pixels (0 outside the window).
    image_size: (width, height).

    Full pixel u lies at crop coordinate ``(u - x0 + 0.5) * S / L - 0.5``; the field is
    sampled bilinearly there (clamped at the crop border) and scaled by L (= S * the
    full-pixels-per-crop-pixel factor, undoing the normalisation by S).
    """
    W, H = image_size
    S, C = pred.shape[0], pred.shape[-1]
    L = win.size
    out = np.zeros((H, W, C), np.float32)
    xa, xb = max(win.x0, 0), min(win.x0 + L, W)
    ya, yb = max(win.y0, 0), min(win.y0 + L, H)
    if xa >= xb or ya >= yb:
        return out
    us = (np.arange(xa, xb, dtype=np.float32) - win.x0 + 0.5) * (S / L) - 0.5
    vs = (np.arange(ya, yb, dtype=np.float32) - win.y0 + 0.5) * (S / L) - 0.5
    mx, my = np.meshgrid(us, vs)
    field = cv2.remap(
        np.ascontiguousarray(pred, np.float32),
        mx,
        my,
        cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )
    out[ya:yb, xa:xb] = field.reshape(yb - ya, xb - xa, C) * L
    return out


# ------------------------------------------------------------------------------------------
# the same contract on tensors (any device)
# ------------------------------------------------------------------------------------------
def _bilinear_matrix(src: Tensor, size: int) -> Tensor:
    """(n, size) weights that sample a line of ``size`` pixels bilinearly at positions
    ``src`` (n,), clamped to the line's ends (OpenCV's border replication)."""
    src = src.clamp(0, size - 1)
    j0 = src.floor()
    frac = src - j0
    j0 = j0.long()
    j1 = (j0 + 1).clamp(max=size - 1)
    w = torch.zeros(src.shape[0], size, dtype=src.dtype, device=src.device)
    rows = torch.arange(src.shape[0], device=src.device)
    w.index_put_((rows, j0), 1 - frac, accumulate=True)
    w.index_put_((rows, j1), frac, accumulate=True)
    return w


def resample_matrix(L: int, S: int, device=None) -> Tensor:
    """(S, L) float64 weights resampling a line of L pixels to S as :func:`crop_resize` does:
    the exact area average of each output pixel's span when shrinking (OpenCV's INTER_AREA),
    bilinear at half-pixel centres with replicated ends when enlarging (INTER_LINEAR)."""
    f64 = torch.float64
    if L == S:
        return torch.eye(S, dtype=f64, device=device)
    if L > S:
        edges = torch.arange(S + 1, dtype=f64, device=device) * (L / S)
        j = torch.arange(L, dtype=f64, device=device)
        overlap = torch.minimum(edges[1:, None], j + 1) - torch.maximum(edges[:-1, None], j)
        return overlap.clamp_min(0) * (S / L)
    return _bilinear_matrix((torch.arange(S, dtype=f64, device=device) + 0.5) * (L / S) - 0.5, L)


def _resample(image: Tensor, Ay: Tensor, Ax: Tensor) -> Tensor:
    """(h, w, C) float32 -> (Ay rows, Ax rows, C): out = Ay @ image @ Ax^T per channel."""
    f32 = torch.float32
    return torch.einsum("jm,imc->ijc", Ax.to(f32), torch.einsum("il,lmc->imc", Ay.to(f32), image))


def resize_tensor(image: Tensor, size: tuple[int, int]) -> Tensor:
    """(h, w[, C]) tensor -> (H, W[, C]) float32 for ``size`` = (W, H), on its device: OpenCV's
    area resize when shrinking, bilinear when enlarging (each axis on its own)."""
    W, H = size
    flat = image.ndim == 2
    img = (image[..., None] if flat else image).to(torch.float32)
    h, w = img.shape[:2]
    out = _resample(img, resample_matrix(h, H, image.device), resample_matrix(w, W, image.device))
    return out[..., 0] if flat else out


def crop_resize_tensor(image: Tensor, win: CropWindow, S: int) -> Tensor:
    """:func:`crop_resize` of a tensor (H, W[, C]) on its device -> (S, S[, C]) float32."""
    H, W = image.shape[:2]
    flat = image.ndim == 2
    img = (image[..., None] if flat else image).to(torch.float32)
    L = win.size
    xa, xb = max(win.x0, 0), min(win.x0 + L, W)
    ya, yb = max(win.y0, 0), min(win.y0 + L, H)
    if xa >= xb or ya >= yb:
        out = img.new_zeros((S, S, img.shape[-1]))
    else:  # the window's columns outside the image are zeros: drop them from the product
        A = resample_matrix(L, S, image.device)
        out = _resample(img[ya:yb, xa:xb], A[:, ya - win.y0 : yb - win.y0], A[:, xa - win.x0 : xb - win.x0])
    return out[..., 0] if flat else out


def crop_passes_tensor(surface: Tensor, mask: Tensor, win: CropWindow, S: int) -> tuple[Tensor, Tensor]:
    """:func:`crop_passes` of tensors (H, W, C), (H, W) bool on their device."""
    m = mask.to(torch.float32)
    cov = crop_resize_tensor(m, win, S)
    vals = crop_resize_tensor(surface.to(torch.float32) * m[..., None], win, S)
    covered = cov[..., None] > 1e-6
    vals = torch.where(covered, vals / torch.where(covered, cov[..., None], torch.ones_like(vals)), 0.0)
    return vals, cov


def encode_render_tensor(passes: dict[str, Tensor], coverage: Tensor, render_passes: tuple[str, ...]) -> Tensor:
    """:func:`encode_render` of tensors on their device, without reading anything back."""
    inside = (coverage > 0.5).to(torch.float32)
    touched = (coverage > 0).to(torch.float32)
    chans = []
    for name in render_passes:
        if name == "mask":
            chans.append(coverage[..., None])
            continue
        v = passes[name].reshape(coverage.shape + (-1,)).to(torch.float32)
        if name == "rgb":
            v = v * 2.0 - 1.0
        elif name == "depth":  # the mean on the mask, else on any coverage, else 0
            d = v[..., 0]
            on_mask = (d * inside).sum() / inside.sum().clamp_min(1)
            on_any = (d * touched).sum() / touched.sum().clamp_min(1)
            v = v - torch.where(inside.sum() > 0, on_mask, on_any)
        chans.append(torch.where(coverage[..., None] > 0, v, 0.0))
    return torch.cat(chans, -1).permute(2, 0, 1).contiguous()


def uncrop_flow_tensor(pred: Tensor, win: CropWindow, image_size: tuple[int, int]) -> Tensor:
    """:func:`uncrop_flow` of a tensor (S, S, C) on its device -> (H, W, C) float32."""
    W, H = image_size
    S, L = pred.shape[0], win.size
    out = pred.new_zeros((H, W, pred.shape[-1]), dtype=torch.float32)
    xa, xb = max(win.x0, 0), min(win.x0 + L, W)
    ya, yb = max(win.y0, 0), min(win.y0 + L, H)
    if xa >= xb or ya >= yb:
        return out
    f64, dev = torch.float64, pred.device
    us = (torch.arange(xa, xb, dtype=f64, device=dev) - win.x0 + 0.5) * (S / L) - 0.5
    vs = (torch.arange(ya, yb, dtype=f64, device=dev) - win.y0 + 0.5) * (S / L) - 0.5
    out[ya:yb, xa:xb] = _resample(pred.to(torch.float32), _bilinear_matrix(vs, S), _bilinear_matrix(us, S)) * L
    return out


def mask_boxes(mask: Tensor) -> np.ndarray:
    """(V, H, W) bool masks on any device -> (V, 4) int64 bounding boxes ``(y_lo, y_hi, x_lo,
    x_hi)`` on the host (one small read-back); -1 rows for empty masks."""
    V, H, W = mask.shape
    rows, cols = mask.any(2), mask.any(1)
    ys = torch.arange(H, device=mask.device)
    xs = torch.arange(W, device=mask.device)
    box = torch.stack([torch.where(rows, ys, H).amin(1), torch.where(rows, ys, -1).amax(1),
                       torch.where(cols, xs, W).amin(1), torch.where(cols, xs, -1).amax(1)], 1)  # fmt: skip
    box = box.cpu().numpy()
    box[box[:, 1] < 0] = -1
    return box
