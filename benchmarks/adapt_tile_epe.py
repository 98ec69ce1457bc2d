"""Held-out end-point error of adapted networks, whole-window crops and fine-pass tiles apart.

    python benchmarks/adapt_tile_epe.py SESSION.h5 --frames 25:50 [WEIGHTS ...]

The held-out frames are those `mvcap adapt` holds out of the same frames (every
``val_every``-th, from the middle of the first group). Their samples are made as adaptation
makes them, with the capture's photos and the estimate as label (:func:`mvcap.adapt.
adaptation_samples`), once without and once with tiles at the coarse-to-fine pass's
resolution (``--fine-px``). Prints, per weights file (and the shipped network), the mean
error (image px) against the label on the whole-window crops and on the tiles alone, beside
predicting nothing.
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from mvcap.adapt import AdaptConfig, _epe, adaptation_samples
from mvcap.capture import Session
from mvcap.nets.predictor import LearnedPredictor


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("session")
    ap.add_argument("weights", nargs="*", help="weights files (the shipped network is always scored)")
    ap.add_argument("--frames", default="25:50", help="START:STOP, the frames adaptation was given")
    ap.add_argument("--fine-px", type=float, default=2.0)
    args = ap.parse_args(argv)
    start, stop = (int(x) for x in args.frames.split(":"))
    plain = AdaptConfig()
    k = plain.val_every
    frames = list(range(start, stop))[k // 2 :: k]
    net_cfg = LearnedPredictor.load("lite", device="cpu").cfg  # the plain network has the coarse-to-fine pass
    with Session.open(args.session) as s:
        whole = adaptation_samples(s, s.subject, frames, plain, net_cfg)
        both = adaptation_samples(s, s.subject, frames, dataclasses.replace(plain, fine_px=args.fine_px), net_cfg)
    # the tiles are the samples of `both` that are not, in order, those of `whole`
    is_tile, j = [], 0
    for photo in both["photo"]:
        same = j < len(whole["photo"]) and torch.equal(photo, whole["photo"][j])
        is_tile.append(not same)
        j += same
    tiles = {key: value[torch.tensor(is_tile)] for key, value in both.items()}
    print(f"{args.session}: frames {frames}, {len(whole['photo'])} crops, {len(tiles['photo'])} tiles")
    print("| network | crops px | crops, nothing px | tiles px | tiles, nothing px |")
    print("|---|---:|---:|---:|---:|")
    for w in [None, *args.weights]:
        net = LearnedPredictor.load(w, device="cpu").net
        (c, cz), (t, tz) = _epe(net, whole), _epe(net, tiles)
        print(f"| {w or 'shipped'} | {c:.2f} | {cz:.2f} | {t:.2f} | {tz:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
