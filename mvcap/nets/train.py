"""Training loop of the displacement network.

``train(cfg, out_dir, resume=True)`` writes into ``out_dir``:

* ``checkpoint.pt`` -- model, optimizer, LR schedule and step (written atomically every
  ``checkpoint_every`` steps / ``checkpoint_minutes`` and when the run stops, also on
  Ctrl-C or SIGTERM); a new call with ``resume=True`` continues from it, and because the
  data of step k is a pure function of (seed, k) the resumed run sees the same batches;
* ``weights.pt`` -- the small inference file (net config + weights), what
  :meth:`mvcap.nets.predictor.LearnedPredictor.load` reads (ship it as
  ``models/displacement/<name>.pt``);
* ``log.csv`` -- one row per ``log_every`` steps (loss, train EPE) and per validation
  (validation loss and EPE in crop and full-image pixels, plus the EPE of predicting no
  displacement, the baseline the network has to beat);
* ``val_fields.png`` -- photo, render, true and predicted fields (HSV colour wheel: hue =
  direction, brightness = length) and the error for a few validation samples;
* ``config.json`` -- the training config.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import signal
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from mvcap.errors import MvcapError

from .data import DataConfig, DisplacementDataset, StepBatchSampler, collate, make_loader
from .displacement import DisplacementNet, NetConfig, endpoint_error, training_loss

__all__ = [
    "CheckpointError",
    "TrainConfig",
    "TrainResult",
    "train",
    "load_train_config",
    "flow_to_rgb",
    "WEIGHTS_FORMAT",
    "save_weights",
    "weights_blob",
    "export_weights",
]

WEIGHTS_FORMAT = "mvcap-displacement-net"
WEIGHTS_VERSION = 1


class CheckpointError(MvcapError):
    """A training checkpoint cannot be read or is not a mvcap checkpoint."""


@dataclass(frozen=True)
class TrainConfig:
    """A training run (``configs/nets/train_*.toml``): sections ``[net]``, ``[data]`` plus
    the optimisation settings below.

    steps: total optimisation steps; batch_size: samples per step.
    lr / lr_min_ratio / warmup_steps: Adam learning rate, linear warm-up then cosine decay
      to ``lr * lr_min_ratio`` at ``steps``; weight_decay (Adam's L2); grad_clip (norm, 0 = off).
    budget_minutes: when > 0, a fixed wall-clock budget: training stops once this many minutes
      of training (summed over resumed calls) have run, and the cosine decay follows the time
      spent instead of the step count (``steps`` is then only a cap); for GPU runs of a set length.
    init_weights: start from this weights file (fine-tuning; a path from the working
      directory, a shipped network's name such as "lite", or "shipped" = the default one; its
      network config must equal
      ``[net]``, or differ only in ``flow_prior``: a plain network then starts the flow-prior
      one as flow itself) with a fresh optimizer and schedule; "" = random initialisation. A
      resumed run continues from its checkpoint instead.
    num_workers: data worker processes (0 = generate in the training process, -1 = all cores
      but two);
    threads: torch threads of the training process (0 = cores left over by the workers).
    device: "auto" (CUDA when available), "cpu" or "cuda"; amp: bfloat16 autocast on CUDA;
      grad_checkpoint: recompute activations in the backward pass (less memory, ~30 % slower;
      batch-norm running statistics are then updated twice per step).
    log_every / val_every / checkpoint_every: in steps; checkpoint_minutes: also checkpoint
      when this much wall time passed since the last one; vis_samples: validation samples
      drawn in val_fields.png.
    reuse / reuse_pool: for runs bound by data (a GPU waiting for samples the CPU renders):
      each loaded batch serves ``reuse`` steps, and a step's samples are drawn at random from
      the last ``reuse_pool`` loaded batches (a function of the seed and the step, so a
      resumed run still sees the same data); 1 and 1 = a fresh batch every step.
    """

    net: NetConfig = field(default_factory=NetConfig)
    data: DataConfig = field(default_factory=DataConfig)
    steps: int = 100_000
    batch_size: int = 8
    lr: float = 1e-3
    lr_min_ratio: float = 0.05
    warmup_steps: int = 500
    weight_decay: float = 0.0
    grad_clip: float = 5.0
    num_workers: int = 8
    threads: int = 0
    device: str = "auto"
    amp: bool = True
    grad_checkpoint: bool = False
    log_every: int = 20
    val_every: int = 1000
    checkpoint_every: int = 1000
    checkpoint_minutes: float = 10.0
    vis_samples: int = 4
    budget_minutes: float = 0.0
    init_weights: str = ""
    reuse: int = 1
    reuse_pool: int = 1

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be >= 1")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")
        for name in ("log_every", "val_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.num_workers < -1:
            raise ValueError("num_workers must be >= 0, or -1 for all cores but two")
        if not self.budget_minutes >= 0 or not self.checkpoint_minutes > 0:
            raise ValueError("budget_minutes must be >= 0 and checkpoint_minutes > 0")
        if self.reuse < 1 or self.reuse_pool < 1:
            raise ValueError(
                f"reuse and reuse_pool must be >= 1 (1 and 1: a fresh batch every step), "
                f"got {self.reuse} and {self.reuse_pool}"
            )


@dataclass(frozen=True)
class TrainResult:
    """step: the step reached; val_epe_px: last validation EPE (crop pixels, NaN if none);
    checkpoint / weights: the files written (weights: the latest); best: the weights with the
    lowest validation EPE so far (None before the first validation), at ``best_step``."""

    step: int
    val_epe_px: float
    checkpoint: Path
    weights: Path
    best: Path | None = None
    best_val_epe_px: float = float("nan")
    best_step: int = 0

    def describe(self) -> str:
        """What a person reads at the end of a training run."""
        text = f"step {self.step}: val EPE {self.val_epe_px:.3f} px (crop); weights {self.weights}"
        if self.best is not None:
            text += f"\nbest: step {self.best_step}, val EPE {self.best_val_epe_px:.3f} px; weights {self.best}"
        return text


def load_train_config(path=None, overrides=None) -> TrainConfig:
    """A :class:`TrainConfig` from TOML plus ``key=value`` overrides (list or nested dict).

    The file may name the network shape in a separate file with ``net_file = "lite.toml"``
    (relative to the config's folder, then to ``configs/nets/``); keys of a ``[net]``
    table in the training file override it.
    """
    from mvcap.config import CONFIG_DIR, ConfigError, build_config, merge, read_toml

    data: dict = {}
    if path is not None:
        data, path = read_toml(path)
        net_file = data.pop("net_file", None)
        if net_file is not None and not isinstance(net_file, str):
            raise ConfigError(f"{path}: 'net_file' must be a file name (a string), got {net_file!r}")
        if net_file:
            candidates = [path.parent / net_file, CONFIG_DIR / "nets" / net_file, Path(net_file)]
            found = next((c for c in candidates if c.exists()), None)
            if found is None:
                raise ConfigError(f"{path}: net_file {net_file!r} not found (looked in {[str(c) for c in candidates]})")
            data["net"] = merge(read_toml(found)[0], data.get("net", {}))
    return build_config(TrainConfig, data, overrides, str(path or "config"))


# ==========================================================================================
# files
# ==========================================================================================
def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _load_checkpoint(path: str | Path) -> dict:
    """A training checkpoint, read with ``weights_only=True`` (a crafted file cannot run code)."""
    from .predictor import load_plain_torch

    hint = "train again with --no-resume (or another --out folder) to start over"
    ck = load_plain_torch(path, CheckpointError, hint)
    missing = [k for k in ("net_config", "model", "step") if not isinstance(ck, dict) or k not in ck]
    if missing:
        raise CheckpointError(f"{path} is not a mvcap training checkpoint (missing {missing}); {hint}")
    return ck


def _state_dict_cpu(net: torch.nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}


def weights_blob(net: DisplacementNet, meta: dict | None = None) -> dict:
    """What an inference file holds: format tag, net config and weights (float32, CPU)."""
    return {
        "format": WEIGHTS_FORMAT,
        "version": WEIGHTS_VERSION,
        "net_config": dataclasses.asdict(net.cfg),
        "state_dict": _state_dict_cpu(net),
        "meta": meta or {},
    }


def save_weights(net: DisplacementNet, path: Path, meta: dict | None = None) -> Path:
    """Write the inference file (:func:`weights_blob`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_save(weights_blob(net, meta), path)
    return path


def export_weights(checkpoint: str | Path, out: str | Path) -> Path:
    """Write the inference weights file from a training checkpoint."""
    ck = _load_checkpoint(checkpoint)
    net = DisplacementNet(NetConfig(**_tuples(ck["net_config"])))
    net.load_state_dict(ck["model"])
    return save_weights(net, Path(out), {"step": ck["step"], "val_epe_px": ck.get("val_epe_px")})


def _cfg_json(cfg) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def _tuples(d: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


# ==========================================================================================
# visualisation
# ==========================================================================================
def flow_to_rgb(flow: np.ndarray, mask: np.ndarray | None = None, max_mag: float | None = None) -> np.ndarray:
    """(H, W, 2) field -> (H, W, 3) uint8 on the HSV colour wheel: hue = direction,
    value = length / max_mag (default: the largest length), black off the mask."""
    flow = np.asarray(flow, np.float32)
    mag = np.linalg.norm(flow, axis=-1)
    if mask is None:
        mask = np.ones(mag.shape, bool)
    if max_mag is None:
        max_mag = float(mag[mask].max()) if mask.any() else 1.0
    ang = (np.degrees(np.arctan2(flow[..., 1], flow[..., 0])) % 360.0) / 2.0
    hsv = np.zeros(flow.shape[:2] + (3,), np.uint8)
    hsv[..., 0] = ang.astype(np.uint8)
    hsv[..., 1] = 255
    hsv[..., 2] = np.clip(mag / max(max_mag, 1e-6) * 255, 0, 255).astype(np.uint8)
    rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    rgb[~mask] = 0
    return rgb


def _vis_png(batch: dict, pred: torch.Tensor, path: Path, S: int, render_passes) -> None:
    rows = []
    for i in range(pred.shape[0]):
        m = batch["mask"][i, 0].numpy() > 0
        photo = ((batch["photo"][i].permute(1, 2, 0).numpy() + 1) * 127.5).clip(0, 255).astype(np.uint8)
        if "rgb" in render_passes:
            o = render_passes.index("rgb")
            r = batch["render"][i, o : o + 3].permute(1, 2, 0).numpy()
            rend = ((r + 1) * 127.5).clip(0, 255).astype(np.uint8) * m[..., None]
        else:
            rend = np.repeat((m * 255).astype(np.uint8)[..., None], 3, -1)
        true = batch["target"][i].permute(1, 2, 0).numpy() * S
        p = pred[i].permute(1, 2, 0).numpy() * S
        mx = float(np.linalg.norm(true, axis=-1)[m].max()) if m.any() else 1.0
        err = np.linalg.norm(p - true, axis=-1)
        err_img = cv2.applyColorMap(np.clip(err / max(mx, 1e-6) * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_INFERNO)
        err_img = err_img[..., ::-1] * m[..., None]
        tiles = [photo, rend, flow_to_rgb(true, m, mx), flow_to_rgb(p, m, mx), err_img]
        row = np.concatenate(
            [cv2.resize(np.ascontiguousarray(t), (S, S), interpolation=cv2.INTER_NEAREST) for t in tiles],
            1,
        )
        epe = float(err[m].mean()) if m.any() else float("nan")
        cv2.putText(
            row,
            f"max {mx:.1f}px epe {epe:.2f}px",
            (3 * S + 2, 12),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.35,
            (255, 255, 255),
            1,
            cv2.LINE_AA,
        )
        rows.append(row)
    header = np.zeros((14, rows[0].shape[1], 3), np.uint8)
    for k, name in enumerate(["photo", "render", "true", "predicted", "error"]):
        cv2.putText(
            header,
            name,
            (k * S + 2, 11),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.35,
            (255, 255, 255),
            1,
            cv2.LINE_AA,
        )
    img = np.concatenate([header] + rows, 0)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    cv2.imwrite(str(tmp), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    os.replace(tmp, path)


# ==========================================================================================
# training
# ==========================================================================================
def _lr_factor(cfg: TrainConfig, step: int, trained_s: float = 0.0) -> float:
    """Linear warm-up over steps, then cosine decay over the steps or, with a budget, over
    the training seconds spent."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.budget_minutes > 0:
        t = min(1.0, trained_s / (60.0 * cfg.budget_minutes))
    else:
        t = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.lr_min_ratio + (1 - cfg.lr_min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def _num_workers(cfg: TrainConfig) -> int:
    """Data worker processes: the config's, or all cores but two for ``-1``."""
    if cfg.num_workers >= 0:
        return cfg.num_workers
    return max(1, (os.cpu_count() or 1) - 2)


def _device(cfg: TrainConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' but CUDA is not available; use device='auto' or 'cpu'")
    return torch.device(cfg.device)


def _to(batch: dict, device) -> dict:
    """Batch to the device; images channels-last (faster convolutions on CPU and GPU)."""
    return {
        k: v.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        if v.ndim == 4
        else v.to(device, non_blocking=True)
        for k, v in batch.items()
    }


class _Stop(Exception):
    pass


def _validation_set(cfg: TrainConfig, out_dir: Path) -> dict:
    """The fixed validation split, generated once and cached in ``out_dir/val_data.pt``."""
    path = out_dir / "val_data.pt"
    key = {"data": dataclasses.asdict(cfg.data), "net": dataclasses.asdict(cfg.net)}
    key = json.loads(json.dumps(key))
    if path.exists():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)  # plain data only: no code
            if blob.get("key") == key:
                return blob["batch"]
        except Exception:  # noqa: BLE001 - a broken cache is regenerated
            pass
    ds = DisplacementDataset(cfg.data, cfg.net, "val")
    workers = _num_workers(cfg)
    if workers > 0:  # chunks of 8 so that all workers share the work
        n = cfg.data.num_val
        chunks = [list(range(a, min(a + 8, n))) for a in range(0, n, 8)]
        loader = make_loader(ds, chunks, workers)
        parts = list(loader)
        del loader
        batch = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    else:
        batch = collate([ds[i] for i in range(len(ds))])
    _atomic_save({"key": key, "batch": batch}, path)
    return batch


@torch.no_grad()
def evaluate(net: DisplacementNet, batch: dict, device, batch_size: int = 16, amp: bool = False) -> dict:
    """Loss and EPE of the last stack over a batch dict (crop px, full-image px, and the
    zero-prediction baseline in crop px), plus the predictions (CPU)."""
    was = net.training
    net.eval()
    S = net.cfg.crop_size
    n = batch["photo"].shape[0]
    preds, loss = [], 0.0
    for a in range(0, n, batch_size):
        b = _to({k: v[a : a + batch_size] for k, v in batch.items()}, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out, log_scale = net.forward_with_scale(b["photo"], b["render"])
        loss += float(training_loss(out, log_scale, b["target"], b["mask"])) * b["photo"].shape[0]
        preds.append(out[-1].float().cpu())
    net.train(was)
    pred = torch.cat(preds)
    tgt, m = batch["target"], batch["mask"]
    return {
        "loss": loss / n,
        "epe_px": float(endpoint_error(pred, tgt, m, S)),
        "epe_full_px": float(endpoint_error(pred, tgt, m, batch["window"])),
        "zero_epe_px": float(endpoint_error(torch.zeros_like(tgt), tgt, m, S)),
        "pred": pred,
    }


CSV_FIELDS = [
    "step",
    "wall_s",
    "lr",
    "loss",
    "train_epe_px",
    "steps_per_s",
    "val_loss",
    "val_epe_px",
    "val_epe_full_px",
    "val_zero_epe_px",
]


def train(
    cfg: TrainConfig,
    out_dir: str | Path,
    resume: bool = True,
    progress: bool = True,
    max_steps: int | None = None,
) -> TrainResult:
    """Train (or continue training) the displacement network; see the module docstring.

    max_steps: stop after this many steps of *this call* (the schedule still runs to
    ``cfg.steps``); for tests and time-boxed runs.
    """
    from tqdm import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = _device(cfg)
    threads = cfg.threads or max(1, (os.cpu_count() or 1) - _num_workers(cfg))
    if device.type == "cpu":
        torch.set_num_threads(threads)
    torch.manual_seed(cfg.data.seed)
    net = DisplacementNet(cfg.net).to(device, memory_format=torch.channels_last)
    net.grad_checkpointing = cfg.grad_checkpoint
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    clock = {"trained_s": 0.0}  # training wall time over all calls; drives a budgeted schedule
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(cfg, s, clock["trained_s"]))
    ck_path, w_path, best_path, log_path = (
        out_dir / "checkpoint.pt",
        out_dir / "weights.pt",
        out_dir / "best.pt",
        out_dir / "log.csv",
    )
    step, val_epe = 0, float("nan")
    # validation EPE is noisy between checkpoints, so the best weights are kept beside the latest
    best_epe, best_step = float("inf"), 0
    if resume and ck_path.exists():
        ck = _load_checkpoint(ck_path)
        if ck.get("net_config") != json.loads(json.dumps(dataclasses.asdict(cfg.net))):
            raise ValueError(
                f"{ck_path} was trained with a different [net] config; use another --out folder or "
                "train without --resume to start over"
            )
        net.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        step, val_epe = int(ck["step"]), float(ck.get("val_epe_px", float("nan")))
        clock["trained_s"] = float(ck.get("trained_s", 0.0))
        if best_path.exists():
            best_epe = float(ck.get("best_val_epe_px", float("inf")))
            best_step = int(ck.get("best_step", 0))
    else:
        best_path.unlink(missing_ok=True)  # from the run this one starts over
        if cfg.init_weights:
            from .predictor import LearnedPredictor, WeightsError

            source = None if cfg.init_weights == "shipped" else cfg.init_weights
            start = LearnedPredictor.load(source, device="cpu").net
            if cfg.net.flow_prior:  # a plain network starts a flow-prior one as flow itself
                start = start.with_flow_prior()
            if start.cfg != cfg.net:
                raise WeightsError(
                    f"init_weights {cfg.init_weights!r} were trained for another network config "
                    f"({start.cfg}); start from weights of the [net] shape, or train from scratch"
                )
            net.load_state_dict(start.state_dict())
    (out_dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    amp = cfg.amp and device.type == "cuda"

    def checkpoint():
        state = {
            "format": "mvcap-displacement-checkpoint",
            "step": step,
            "net_config": json.loads(json.dumps(dataclasses.asdict(cfg.net))),
            "train_config": _cfg_json(cfg),
            "model": _state_dict_cpu(net),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "val_epe_px": val_epe,
            "best_val_epe_px": best_epe,
            "best_step": best_step,
            "trained_s": clock["trained_s"],
        }
        _atomic_save(state, ck_path)
        save_weights(
            net,
            w_path,
            {"step": step, "val_epe_px": val_epe, "train_config": state["train_config"]},
        )

    new_log = not log_path.exists() or not resume
    log_f = open(log_path, "w" if new_log else "a", newline="")
    writer = csv.DictWriter(log_f, fieldnames=CSV_FIELDS, lineterminator="\n")
    if new_log:
        writer.writeheader()

    val_batch = _validation_set(cfg, out_dir)
    end = cfg.steps if max_steps is None else min(cfg.steps, step + max_steps)
    loader = batches = None
    old_handler = None

    def _sigterm(signum, frame):
        raise _Stop()

    try:
        old_handler = signal.signal(signal.SIGTERM, _sigterm)
    except ValueError:  # not in the main thread
        pass
    t_start, t_ck = time.time(), time.time()
    trained_before = clock["trained_s"]
    budget_s = 60.0 * cfg.budget_minutes
    run_loss, run_epe, run_n, t_log, step_log = 0.0, 0.0, 0, time.time(), step
    bar = tqdm(total=end, initial=step, disable=not progress, dynamic_ncols=True, desc="train")
    try:
        if step < end and not (budget_s > 0 and trained_before >= budget_s):
            ds = DisplacementDataset(cfg.data, cfg.net, "train")
            first = step // cfg.reuse  # the loaded batch this call starts in
            refill = min(cfg.reuse_pool - 1, first)  # a resumed run loads its pool's batches again
            loader = make_loader(
                ds,
                StepBatchSampler(cfg.batch_size, first - refill, (end - 1) // cfg.reuse - first + refill + 1),
                _num_workers(cfg),
                pin_memory=device.type == "cuda",
            )
            net.train()
            batches = iter(loader)  # kept by name so that `finally` can stop its workers
            for b in _step_batches(cfg, batches, first - refill, step, device):
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    preds, log_scale = net.forward_with_scale(b["photo"], b["render"])
                loss = training_loss(preds, log_scale, b["target"], b["mask"])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
                opt.step()
                sched.step()
                step += 1
                clock["trained_s"] = trained_before + time.time() - t_start
                last = step == end or (budget_s > 0 and clock["trained_s"] >= budget_s)
                epe = float(endpoint_error(preds[-1].detach(), b["target"], b["mask"], cfg.net.crop_size))
                run_loss, run_epe, run_n = run_loss + float(loss.detach()), run_epe + epe, run_n + 1
                bar.update(1)
                bar.set_postfix(loss=f"{float(loss.detach()):.4f}", epe=f"{epe:.2f}px", val=f"{val_epe:.2f}px")
                row = None
                if step % cfg.log_every == 0 or last:
                    now = time.time()
                    row = {
                        "step": step,
                        "wall_s": round(now - t_start, 1),
                        "lr": f"{sched.get_last_lr()[0]:.3g}",
                        "loss": f"{run_loss / run_n:.5f}",
                        "train_epe_px": f"{run_epe / run_n:.3f}",
                        "steps_per_s": f"{(step - step_log) / max(now - t_log, 1e-9):.3f}",
                    }
                    run_loss, run_epe, run_n, t_log, step_log = 0.0, 0.0, 0, now, step
                if step % cfg.val_every == 0 or last:
                    ev = evaluate(net, val_batch, device, amp=amp)
                    val_epe = ev["epe_px"]
                    if val_epe < best_epe:
                        best_epe, best_step = val_epe, step
                        save_weights(
                            net,
                            best_path,
                            {"step": step, "val_epe_px": val_epe, "train_config": _cfg_json(cfg)},
                        )
                    row = row or {"step": step, "wall_s": round(time.time() - t_start, 1)}
                    row.update(
                        val_loss=f"{ev['loss']:.5f}",
                        val_epe_px=f"{ev['epe_px']:.3f}",
                        val_epe_full_px=f"{ev['epe_full_px']:.3f}",
                        val_zero_epe_px=f"{ev['zero_epe_px']:.3f}",
                    )
                    k = min(cfg.vis_samples, val_batch["photo"].shape[0])
                    if k > 0:
                        _vis_png(
                            {kk: v[:k] for kk, v in val_batch.items()},
                            ev["pred"][:k],
                            out_dir / "val_fields.png",
                            cfg.net.crop_size,
                            cfg.net.render_passes,
                        )
                if row is not None:
                    writer.writerow(row)
                    log_f.flush()
                if step % cfg.checkpoint_every == 0 or time.time() - t_ck > 60 * cfg.checkpoint_minutes:
                    checkpoint()
                    t_ck = time.time()
                if last:
                    break
    except (KeyboardInterrupt, _Stop):
        if progress:
            bar.write(f"interrupted at step {step}; saving a checkpoint")
    finally:
        bar.close()
        checkpoint()
        log_f.close()
        if old_handler is not None:
            signal.signal(signal.SIGTERM, old_handler)
        if batches is not None and hasattr(batches, "_shutdown_workers"):
            try:
                batches._shutdown_workers()  # a budget's `break` leaves them mid-epoch: stop them now
            except RuntimeError as exc:
                # seen on a CUDA machine: a worker aborts while exiting ("terminate called without
                # an active exception"); the checkpoint and weights are already written
                if "DataLoader worker" not in str(exc):
                    raise
                warnings.warn(f"a data worker ended badly while stopping ({exc}); the run's files are complete",
                              stacklevel=2)  # fmt: skip
        batches = loader = None
    found = best_path.exists() and best_step > 0
    return TrainResult(
        step,
        val_epe,
        ck_path,
        w_path,
        best_path if found else None,
        best_epe if found else float("nan"),
        best_step,
    )


def _step_batches(cfg: TrainConfig, batches, first_load: int, step: int, device):
    """The batch of every step from ``step`` on, on ``device``: loaded batch j (the loader's
    batches are j = first_load, first_load + 1, ...) serves steps [j * reuse, (j + 1) * reuse),
    drawing each step's samples from the last ``reuse_pool`` loaded batches (see
    :class:`TrainConfig`)."""
    from collections import deque

    if cfg.reuse == 1 and cfg.reuse_pool == 1:
        yield from (_to(batch, device) for batch in batches)
        return
    pool: deque = deque(maxlen=cfg.reuse_pool)
    for j, batch in enumerate(batches, start=first_load):
        pool.append(_to(batch, device))
        samples = None
        for s in range(max(step, j * cfg.reuse), (j + 1) * cfg.reuse):
            if samples is None:  # once per loaded batch
                samples = {k: torch.cat([b[k] for b in pool]) for k in pool[0]}
            g = torch.Generator().manual_seed(cfg.data.seed * 1_000_003 + s)
            pick = torch.randperm(len(pool) * cfg.batch_size, generator=g)[: cfg.batch_size].to(device)
            yield _to({k: v[pick] for k, v in samples.items()}, device)  # channels-last again


def main(argv=None) -> None:
    """``python -m mvcap.nets.train CONFIG --out DIR [--no-resume] [key=value ...]``
    (what ``mvcap train-displacement`` runs)."""
    import argparse

    ap = argparse.ArgumentParser(description="Train the displacement network")
    ap.add_argument("config")
    ap.add_argument("--out", required=True)
    ap.add_argument("--no-resume", action="store_true", help="start over even if out/checkpoint.pt exists")
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. batch_size=4 net.hg_stacks=2")
    a = ap.parse_intermixed_args(argv)
    cfg = load_train_config(a.config, a.overrides)
    res = train(cfg, a.out, resume=not a.no_resume, max_steps=a.max_steps)
    print(res.describe())


if __name__ == "__main__":
    main()
