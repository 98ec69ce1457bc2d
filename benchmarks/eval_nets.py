"""Benchmark: displacement networks compared on one held-out synthetic set, sample by sample.

    python benchmarks/eval_nets.py full=runs/lite/weights_step1000.pt \
        notexture=runs/lite_notexture/weights.pt textureonly=runs/lite_textureonly/weights.pt \
        [--samples 256] [--seed 9100001] [--config configs/nets/train_lite.toml] [--set data.tile_prob=1]

The training run's own validation split (64 samples) is too small to rank networks whose EPEs
differ by a few tenths of a pixel: it moves by ~0.3 px between checkpoints of one run. Here
every network sees the same ``--samples`` held-out samples (the ``[data]`` of ``--config``
with its validation seed replaced by ``--seed``; each network gets the render passes it was
built for, the samples are otherwise identical), and the table gives the mean EPE with its
standard error and, against the first network, the mean paired difference with its standard
error: a difference larger than about twice its standard error is not sampling noise.
EPE is in crop pixels (the network's input resolution) and in full-image pixels; networks that
crop differently (e.g. lite's 96² and paper's 256²) see the same scenes, each cropped its own
way, and are compared in full-image pixels.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from mvcap.nets.data import DisplacementDataset, collate
from mvcap.nets.displacement import RENDER_PASS_CHANNELS, endpoint_error, select_render_passes
from mvcap.nets.predictor import LearnedPredictor, WeightsError
from mvcap.nets.train import load_train_config

ROOT = Path(__file__).resolve().parents[1]


def per_sample_epe(predictor: LearnedPredictor, batch: dict, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """EPE per sample of the last stack, in crop pixels and full-image pixels: two (N,) arrays."""
    net, S, dev = predictor.net, predictor.cfg.crop_size, predictor.device
    crop, full = [], []
    with torch.no_grad():
        for a in range(0, batch["photo"].shape[0], batch_size):
            b = {k: v[a : a + batch_size] for k, v in batch.items()}
            pred = net(b["photo"].to(dev), b["render"].to(dev))[-1].float().cpu()
            for i in range(pred.shape[0]):
                one = (pred[i : i + 1], b["target"][i : i + 1], b["mask"][i : i + 1])
                crop.append(float(endpoint_error(*one, S)))
                full.append(float(endpoint_error(*one, b["window"][i : i + 1])))
    return np.array(crop), np.array(full)


def _se(x: np.ndarray) -> float:
    return float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("weights", nargs="+", help="NAME=FILE; the first is the reference of the paired differences")
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--seed", type=int, default=9100001, help="held-out seed (not the training or validation seed)")
    ap.add_argument("--config", default=str(ROOT / "configs/nets/train_lite.toml"), help="training config: [data]")
    ap.add_argument(
        "--set", dest="overrides", action="append", default=[], help="config override, e.g. data.tile_prob=1"
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"], help="where the networks run")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)

    named = []
    for item in a.weights:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            ap.error(f"weights must be given as NAME=FILE, got {item!r}")
        try:
            named.append((name, LearnedPredictor.load(path, device=a.device, batch_size=16)))
        except (FileNotFoundError, WeightsError) as exc:
            ap.error(str(exc))
    if a.samples < 2:
        ap.error(f"--samples must be >= 2 (standard errors need two), got {a.samples}")
    cfg = load_train_config(a.config, a.overrides)
    data = dataclasses.replace(cfg.data, val_seed=a.seed, num_val=a.samples)
    # one sample set per crop geometry (the same scenes: samples depend on the seed and index
    # alone), with every pass; each network reads the passes it was built for
    all_passes = tuple(RENDER_PASS_CHANNELS)
    batches = {}
    for _, pred in named:
        key = (pred.cfg.crop_size, pred.cfg.crop_scale)
        if key not in batches:
            t0 = time.perf_counter()
            ds = DisplacementDataset(data, dataclasses.replace(pred.cfg, render_passes=all_passes), "val")
            batches[key] = collate([ds[i] for i in range(len(ds))])
            print(f"{a.samples} samples generated for {key[0]}² crops ({time.perf_counter() - t0:.0f} s)", flush=True)
    first = next(iter(batches.values()))
    S = named[0][1].cfg.crop_size
    zero = float(endpoint_error(torch.zeros_like(first["target"]), first["target"], first["mask"], S))
    # networks that crop differently are compared in full-image pixels
    in_full = len(batches) > 1

    rows, ref = [], None
    for name, pred in named:
        t0 = time.perf_counter()
        batch = batches[(pred.cfg.crop_size, pred.cfg.crop_scale)]
        mine = dict(batch, render=select_render_passes(batch["render"], all_passes, pred.cfg.render_passes))
        crop, full = per_sample_epe(pred, mine)
        ref = (full if in_full else crop) if ref is None else ref
        diff = (full if in_full else crop) - ref
        rows.append(
            f"| {name} | {', '.join(pred.cfg.render_passes)} | {crop.mean():.3f} ± {_se(crop):.3f} "
            f"| {full.mean():.2f} | {diff.mean():+.3f} ± {_se(diff):.3f} |"
        )
        print(f"{name}: {crop.mean():.3f} px ({time.perf_counter() - t0:.0f} s)", flush=True)
    data_of = " ".join([a.config, *a.overrides])
    print(f"\n{a.samples} held-out samples (seed {a.seed}, data of {data_of}); ± = standard error\n")
    unit = "full px" if in_full else "crop px"
    print(f"| network | render passes | EPE crop px | EPE full px | paired Δ vs {named[0][0]} ({unit}) |")
    print("|---|---|---:|---:|---:|")
    print("\n".join(rows))
    print(f"| (zero field) | | {zero:.3f} | | |")


if __name__ == "__main__":
    main()
