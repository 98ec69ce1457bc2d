"""The learned displacement predictor: :class:`DisplacementNet` behind the predictor
interface of :mod:`mvcap.displace`.

Per view: a square window around the *rendered* person (the render mask's bounding box
enlarged by ``net.crop_scale``) is cut from the photo and the render passes and resampled
to the network's S x S input -- exactly as the training data were made
(:func:`mvcap.nets.data.crop_sample`); the last stack's prediction (crop pixels / S) is
mapped back to full-image pixels (:func:`~.displacement.uncrop_flow`). Confidence is the
render mask (1 on rendered pixels). A network with a confidence head (``NetConfig.confidence``)
also predicts each pixel's expected error b, in pixels of the request (refinement renders a
window of the image, maybe scaled down); the confidence is then the inverse variance
relative to ``confidence_px``: ``min(1, (confidence_px / b)^2)``.

Coarse to fine (``fine_px`` > 0): a network trained at S x S sees a tall person in a 1080p
photo at ~9 image pixels per crop pixel, coarser than the errors it must correct. After the
whole-body pass at S, a second pass runs the same (fully convolutional) network on a
larger crop of the same window, S2 x S2 with S2 chosen so a crop pixel is at most
``fine_px`` image pixels (capped at ``max_crop``, and at the request's own resolution), on
the photo warped by the first pass: it predicts the residual, and the two compose. The
network's output is in crop pixels / S; at S2 it is rescaled by S / S2.

Weights files hold the network config together with the weights
(:func:`mvcap.nets.train.save_weights`); :meth:`LearnedPredictor.load` builds the network
from the stored config, so a file always loads with the shape it was trained with.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
from pathlib import Path

import cv2
import numpy as np
import torch

from mvcap.displace import Displacement, PredictRequest
from mvcap.errors import MvcapError

from .displacement import (
    CropWindow,
    DisplacementNet,
    NetConfig,
    extend_nearest,
    mask_boxes,
    uncrop_flow,
    uncrop_flow_tensor,
    window_of_box,
)

__all__ = [
    "LearnedPredictor",
    "fine_crop_size",
    "request_side",
    "default_weights_path",
    "DEFAULT_NETWORK",
    "WeightsError",
    "TRAIN_HINT",
    "load_plain_torch",
]

TRAIN_HINT = (
    "train one with `mvcap train-displacement` (the shipped networks' commands are in models/README.md) "
    "or pass another weights file"
)


class WeightsError(MvcapError):
    """A weights file is not a displacement-network file or does not fit the network."""


def load_plain_torch(path, error: type[Exception], hint: str, name: str | None = None):
    """``torch.load`` with ``weights_only=True``: tensors, dicts, lists, numbers and strings
    only, so a crafted file cannot run code. Anything else raises ``error`` (one line).
    path: a file's path or a binary file object (called ``name`` in messages)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message is a page long; its first line names the refused global
        first = next((ln.strip() for ln in str(exc).splitlines() if "GLOBAL" in ln or "global" in ln), "")
        raise error(
            f"{name or path} holds objects other than tensors and plain data and was not loaded "
            f"({first[:200] or 'refused by torch.load(weights_only=True)'}); mvcap files hold only "
            f"tensors, numbers, strings, lists and dicts; {hint}"
        ) from None
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise error(f"{name or path} is not a readable torch file ({str(exc).splitlines()[0][:300]}); {hint}") from exc


DEFAULT_NETWORK = "lite_flowprior"  # corrects DIS flow; "lite" is the plain network


def default_weights_path() -> Path:
    """The default shipped network (:data:`DEFAULT_NETWORK`) inside the package."""
    return shipped_weights_path(DEFAULT_NETWORK)


def shipped_weights_path(name: str) -> Path:
    """A network shipped inside the package, by name: ``models/displacement/NAME.pt``."""
    from mvcap.resources import resource_path

    return resource_path(f"models/displacement/{name}.pt", must_exist=False)


def shipped_networks() -> list[str]:
    """The names of the networks shipped inside the package."""
    return sorted(p.stem for p in default_weights_path().parent.glob("*.pt"))


def _net_config_from(d: dict, path) -> NetConfig:
    try:
        return NetConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
    except (TypeError, ValueError) as exc:
        raise WeightsError(f"{path}: the stored network config is not valid for this mvcap version ({exc})") from exc


def _default_cpu_threads() -> int | None:
    """Torch threads for the CPU forward pass. After numba's OpenMP-parallel rasterizer
    has run in the process, torch's OpenMP threads compete with numba's still-spinning
    ones: with 2 threads on 2 busy cores the lite forward took 3.3 s instead of 0.12 s.
    One thread avoids that; with ``OMP_WAIT_POLICY=PASSIVE`` set before start-up (which
    also cures it) torch's own setting is kept."""
    return None if os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE" else 1


class LearnedPredictor:
    """Displacements from the trained network. ``net`` in eval mode; ``device`` where it
    runs; ``batch_size`` views per forward pass; ``cpu_threads``: torch threads during a
    CPU forward pass ("auto": see :func:`_default_cpu_threads`; None: leave torch's);
    ``confidence_px``: the expected error (request pixels) that still gets full weight, for
    networks with a confidence head; ``fine_px``: the coarse-to-fine pass's image pixels per
    crop pixel (0: the whole-body pass only); ``max_crop``: its largest crop size (see the
    module docstring); ``flow``: a flow-prior network's (``cfg.flow_prior``) flow settings
    (:class:`mvcap.displace.FlowConfig`): it runs DIS flow first and predicts its correction."""

    name = "learned"

    def __init__(
        self,
        net: DisplacementNet,
        device: str | torch.device = "cpu",
        batch_size: int = 8,
        cpu_threads: int | None | str = "auto",
        confidence_px: float = 2.0,
        fine_px: float = 0.0,
        max_crop: int = 192,
        flow=None,
    ):
        self.device = torch.device(device)
        self.confidence_px = float(confidence_px)
        if fine_px < 0 or max_crop < 1:
            raise ValueError(f"fine_px must be >= 0 and max_crop >= 1, got {fine_px} and {max_crop}")
        self.fine_px = float(fine_px)
        self.net = net.to(self.device, memory_format=torch.channels_last).eval()
        self.cfg: NetConfig = net.cfg
        self.batch_size = int(batch_size)
        self.cpu_threads = _default_cpu_threads() if cpu_threads == "auto" else cpu_threads
        self.max_crop = int(max_crop)
        self.render_max_side = request_side(self.cfg, max_crop)  # refinement renders at most this
        self.prior = None
        if self.cfg.flow_prior:
            from mvcap.displace import FlowConfig, FlowPredictor

            if self.fine_px > 0:
                raise WeightsError(
                    "a flow-prior network corrects flow at full resolution and has no coarse-to-fine pass; "
                    'set learned_fine_px = 0, or learned_weights = "lite" (the plain network, which has it)'
                )
            self.prior = FlowPredictor(flow or FlowConfig())
        self.source = "in memory"  # where the weights came from (load sets it)

    @classmethod
    def load(
        cls,
        path: str | Path | bytes | None = None,
        device: str = "auto",
        expected: NetConfig | None = None,
        batch_size: int = 8,
        confidence_px: float = 2.0,
        fine_px: float = 0.0,
        max_crop: int = 192,
        flow=None,
    ) -> LearnedPredictor:
        """Load a weights file (default :func:`default_weights_path`), a shipped network by name
        (:func:`shipped_networks`), a training checkpoint, or the bytes of a weights file (a
        subject's adapted network, :mod:`mvcap.adapt`).
        ``expected``: raise if the file's network config differs from it.
        device: "auto" (CUDA when available), "cpu" or "cuda"."""
        if isinstance(path, (bytes, bytearray)):
            source = "the subject's adapted network"
            blob = load_plain_torch(io.BytesIO(path), WeightsError, "adapt it again with `mvcap adapt`", source)
            path = source
        else:
            if path and not Path(path).exists() and str(path) in shipped_networks():
                path = shipped_weights_path(str(path))  # a shipped network by name, e.g. "lite_flowprior"
            path = Path(path) if path else default_weights_path()
            if not path.exists():
                raise FileNotFoundError(
                    f"no displacement-network weights at {path}; name a shipped network "
                    f"({', '.join(shipped_networks())}) or {TRAIN_HINT}"
                )
            source = str(path)
            blob = load_plain_torch(path, WeightsError, TRAIN_HINT)
        if not isinstance(blob, dict) or "net_config" not in blob:
            raise WeightsError(
                f"{path} is not a mvcap displacement-network weights file (no net config inside); {TRAIN_HINT}"
            )
        state = blob.get("state_dict", blob.get("model"))
        if state is None:
            raise WeightsError(f"{path} holds no network weights; {TRAIN_HINT}")
        cfg = _net_config_from(blob["net_config"], path)
        if expected is not None and cfg != expected:
            diff = {
                f.name: (getattr(cfg, f.name), getattr(expected, f.name))
                for f in dataclasses.fields(cfg)
                if getattr(cfg, f.name) != getattr(expected, f.name)
            }
            raise WeightsError(
                f"{path} was trained for another network config; differing settings "
                f"(file, expected): {diff}. "
                "Use weights trained with this config or drop the expectation."
            )
        net = DisplacementNet(cfg)
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:
            raise WeightsError(
                f"{path}: the weights do not fit the network config stored with them "
                f"({str(exc).splitlines()[0]}); "
                f"the file is damaged or was written by another version; {TRAIN_HINT}"
            ) from exc
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        out = cls(net, device, batch_size, confidence_px=confidence_px, fine_px=fine_px, max_crop=max_crop, flow=flow)
        out.source = source
        return out

    # ----------------------------------------------------------------------------------
    def _predict_crops(self, photos: torch.Tensor, renders: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S), (B, C, S, S) -> (B, S, S, 2) last-stack prediction (crop px / S) on
        the network's device, with a third channel, the expected error in those units, for a
        network with confidence."""
        outs = []
        threads = torch.get_num_threads()
        limit = self.device.type == "cpu" and self.cpu_threads is not None
        if limit:
            torch.set_num_threads(int(self.cpu_threads))
        try:
            with torch.no_grad():
                for a in range(0, photos.shape[0], self.batch_size):
                    cl = torch.channels_last
                    p = photos[a : a + self.batch_size].to(self.device).contiguous(memory_format=cl)
                    r = renders[a : a + self.batch_size].to(self.device).contiguous(memory_format=cl)
                    preds, log_scale = self.net.forward_with_scale(p, r)
                    out = preds[-1] if log_scale is None else torch.cat([preds[-1], log_scale.exp()], 1)
                    outs.append(out.float())
        finally:
            if limit:
                torch.set_num_threads(threads)
        return torch.cat(outs).permute(0, 2, 3, 1)

    def _fields(self, size: int, photos, images, channels, mask: np.ndarray, views, windows=None, prior=None) -> dict:
        """The network at crop size ``size`` on each view in ``views``: view -> (field (H, W, C)
        in request pixels: the displacement (a flow-prior network's correction), then a network
        with a confidence head's expected error; its crop window). photos: indexable by view,
        (H, W, 3) each; windows: view -> the crop window to use (default: the network's own
        around the mask); prior: a flow-prior network's (flow (V, H, W, 2), confidence (V, H, W))."""
        from .data import crop_sample

        cfg = self.cfg if size == self.cfg.crop_size else dataclasses.replace(self.cfg, crop_size=size)
        crops, wins = [], []
        for v in views:
            try:
                prior_v = None if prior is None else (prior[0][v], prior[1][v])
                c = crop_sample(
                    cfg, photos[v], images[v], channels, mask[v], window=(windows or {}).get(v), prior=prior_v
                )
            except ValueError as exc:
                raise ValueError(
                    f"{exc}; render them (mvcap.render.render(..., passes=...)) for the learned predictor"
                ) from exc
            crops.append(c)
            wins.append(CropWindow(int(c["x0"]), int(c["y0"]), int(round(float(c["window"])))))
        if not crops:
            return {}
        pred = self._predict_crops(torch.stack([c["photo"] for c in crops]), torch.stack([c["render"] for c in crops]))
        pred = pred.cpu().numpy()
        if size != self.cfg.crop_size:  # the output is in crop pixels / the training size
            pred = pred * (self.cfg.crop_size / size)
        H, W = mask.shape[1:]
        return {v: (uncrop_flow(pred[k], wins[k], (W, H)), wins[k]) for k, v in enumerate(views)}

    def fine_size(self, window: int, image_px: float = 1.0) -> int:
        """The coarse-to-fine pass's crop size for a crop window of ``window`` request pixels
        of ``image_px`` image pixels each (:func:`fine_crop_size`)."""
        return fine_crop_size(self.cfg, window, image_px, self.fine_px, self.max_crop)

    def __call__(self, request: PredictRequest) -> Displacement:
        if isinstance(request.photos, torch.Tensor) and self.fine_px <= 0:
            return self._on_device(request)
        photos = request.photos
        photos = photos.cpu().numpy() if isinstance(photos, torch.Tensor) else np.asarray(photos)
        mask = request.fragments.mask.detach().cpu().numpy().astype(bool)
        if photos.ndim != 4 or photos.shape[-1] != 3 or photos.shape[:3] != mask.shape:
            raise ValueError(
                f"photos must be (V, H, W, 3) matching the render {mask.shape}, "
                f"got {photos.shape}; "
                "undistort them into the render's pinhole image with mvcap.render.undistort_images"
            )
        images = request.passes.images.detach().cpu().numpy()
        channels = request.passes.channels
        V, H, W = mask.shape
        S = self.cfg.crop_size
        prior = None
        if self.prior is not None:
            d = self.prior(request)
            prior = (d.flow.cpu().numpy(), d.confidence.cpu().numpy())
        coarse = self._fields(S, photos, images, channels, mask, [v for v in range(V) if mask[v].any()], prior=prior)
        fields = {v: f for v, (f, _) in coarse.items()}
        image_px = np.ones(V) if request.image_px is None else np.asarray(request.image_px, np.float64)
        by_size: dict[int, list[int]] = {}
        for v, (_, win) in coarse.items():
            size = self.fine_size(win.size, float(image_px[v]))
            if size > S:
                by_size.setdefault(size, []).append(v)
        for size, views in by_size.items():
            # the residual after the whole-body pass, on the photo warped by it
            warped = {v: _warp(photos[v], fields[v][..., :2], mask[v], coarse[v][1]) for v in views}
            photos_v = {v: w[0] for v, w in warped.items()}
            fine = self._fields(size, photos_v, images, channels, mask, views, {v: coarse[v][1] for v in views})
            for v in views:
                f, (x0, y0, ext) = fine[v][0], warped[v][1:]
                fields[v] = _compose(f, ext, x0, y0)
        # a flow-prior network's fields are corrections to the flow, added in place: nothing
        # else holds the flow's arrays (a native-resolution field is worth not copying)
        flow = np.zeros((V, H, W, 2), np.float32) if prior is None else prior[0]
        confidence = mask.astype(np.float32) if prior is None else prior[1]
        for v, field in fields.items():
            flow[v] += field[..., :2]
            if field.shape[-1] > 2:  # expected error b (px): inverse variance, full weight up to confidence_px
                b = np.maximum(field[..., 2], 1e-6)
                confidence[v] *= np.minimum(1.0, (self.confidence_px / b) ** 2)
        flow *= mask[..., None]
        dev = request.fragments.mask.device  # the coarse-to-fine warps ran on the host (OpenCV)
        return Displacement(torch.from_numpy(flow).to(dev), torch.from_numpy(confidence).to(dev))

    def _on_device(self, request: PredictRequest) -> Displacement:
        """The whole-body pass where the request's tensors are (photos (V, H, W, 3) uint8,
        render passes, fragments): crops, network and un-cropping run on that device; only
        the crop windows (4 numbers per view) are read back. Equal to the host path up to
        float rounding."""
        from .data import crop_sample_tensor

        mask = request.fragments.mask
        images, channels = request.passes.images, request.passes.channels
        V, H, W = mask.shape
        if tuple(request.photos.shape) != (V, H, W, 3):
            raise ValueError(
                f"photos must be (V, H, W, 3) matching the render {(V, H, W)}, got {tuple(request.photos.shape)}; "
                "undistort them into the render's pinhole image with mvcap.render.undistort_images"
            )
        boxes = mask_boxes(mask)
        views = [v for v in range(V) if boxes[v, 1] >= 0]
        if self.prior is not None:  # the network's fields are corrections to this flow
            d = self.prior(request)
            flow, confidence = d.flow.to(images.dtype), d.confidence
        else:
            flow, confidence = images.new_zeros((V, H, W, 2)), mask.to(torch.float32)
        if views:
            wins = [window_of_box(boxes[v], self.cfg.crop_scale) for v in views]
            crops = []
            for v, win in zip(views, wins):
                prior = None if self.prior is None else (flow[v], confidence[v])
                crops.append(crop_sample_tensor(self.cfg, request.photos[v], images[v], channels, mask[v], win, prior))
            pred = self._predict_crops(torch.stack([c[0] for c in crops]), torch.stack([c[1] for c in crops]))
            for k, v in enumerate(views):
                field = uncrop_flow_tensor(pred[k].to(flow.device), wins[k], (W, H))
                flow[v] = flow[v] + field[..., :2]
                if field.shape[-1] > 2:  # expected error, as in the host path
                    b = field[..., 2].clamp_min(1e-6)
                    confidence[v] = confidence[v] * ((self.confidence_px / b) ** 2).clamp(max=1.0)
        return Displacement(flow * mask[..., None], confidence)


def _largest_crop(cfg: NetConfig, max_crop: int) -> int:
    """The largest crop the network takes within ``max_crop``: a multiple of its size step,
    at least its training size."""
    step = 2**cfg.hg_depth
    return max(cfg.crop_size, int(max_crop) // step * step)


def request_side(cfg: NetConfig, max_crop: int) -> int:
    """How large refinement renders the estimate for the network (the longer side of the
    body's window, at most): the crops are resampled from it, the largest at ``max_crop``;
    0 (native) for a flow-prior network, whose flow needs the image's own resolution."""
    if cfg.flow_prior:
        return 0
    return max(4 * cfg.crop_size, 2 * _largest_crop(cfg, max_crop))


def fine_crop_size(cfg: NetConfig, window: float, image_px: float, fine_px: float, max_crop: int) -> int:
    """The crop size of the coarse-to-fine pass over a crop window of ``window`` request pixels
    of ``image_px`` image pixels each: a crop pixel of at most ``fine_px`` image pixels, no
    finer than the request, a multiple of the network's size step, at most ``max_crop`` (or
    the training size). The training size or less means no second pass; ``fine_px`` 0: off."""
    if fine_px <= 0:
        return cfg.crop_size
    step = 2**cfg.hg_depth
    want = min(window * image_px / fine_px, window)
    return min(int(np.ceil(want / step)) * step, _largest_crop(cfg, max_crop))


def _warp(photo: np.ndarray, flow: np.ndarray, mask: np.ndarray, win: CropWindow):
    """The photo (H, W, 3) resampled at x + flow(x) inside the crop window (the flow (H, W, 2),
    defined on ``mask``, extended off it by the nearest value). Returns (the warped photo,
    the window part's top-left x0, y0, the extended flow there)."""
    H, W = mask.shape
    xa, xb = max(win.x0, 0), min(win.x0 + win.size, W)
    ya, yb = max(win.y0, 0), min(win.y0 + win.size, H)
    ext = extend_nearest(flow[ya:yb, xa:xb], mask[ya:yb, xa:xb])
    xs, ys = np.meshgrid(np.arange(xa, xb, dtype=np.float32), np.arange(ya, yb, dtype=np.float32))
    out = photo.copy()
    out[ya:yb, xa:xb] = cv2.remap(
        photo, xs + ext[..., 0], ys + ext[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    ).reshape(yb - ya, xb - xa, -1)
    return out, xa, ya, ext


def _compose(fine: np.ndarray, ext: np.ndarray, x0: int, y0: int) -> np.ndarray:
    """The residual field ``fine`` (H, W, C) predicted on the warped photo, composed with the
    first pass's extended flow ``ext`` (h, w, 2) of the window part at (x0, y0): x -> x + r(x)
    + flow(x + r(x)). Other channels stay the fine pass's."""
    out = fine.copy()
    h, w = ext.shape[:2]
    r = fine[y0 : y0 + h, x0 : x0 + w, :2]
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    first = cv2.remap(ext, xs + r[..., 0], ys + r[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    out[y0 : y0 + h, x0 : x0 + w, :2] = r + first
    return out
