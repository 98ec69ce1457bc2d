"""Wall seconds per frame of ``mvcap refine`` on a session's frames, after a warm-up frame (the
renderer's JIT compilation and the caches), one torch thread, nothing written to the session's
own runs but the scratch runs ``_time`` and ``_warm``.

    python benchmarks/refine_time.py SESSION.h5 --frames 0:25:5 [--warm 30] [--set key=value ...]

For side-by-side ratios run it with ``PYTHONPATH=<a worktree of the other commit>`` too,
alternating, on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("session", type=Path)
    ap.add_argument("--frames", default="0:25:5", help="frames to time (mvcap's frame grammar)")
    ap.add_argument("--warm", type=int, default=30, help="the warm-up frame (not timed)")
    ap.add_argument("--set", action="append", default=[], help="refine config override key=value")
    args = ap.parse_args(argv)

    import torch

    from mvcap.body import load_body_model
    from mvcap.capture import Session
    from mvcap.config import load_config
    from mvcap.frames import parse_frames
    from mvcap.refine import RefineConfig, refine_session
    from mvcap.resources import resource_path

    torch.set_num_threads(1)
    model = load_body_model()
    cfg = load_config(RefineConfig, resource_path("configs/refine.toml"), args.set)
    with Session.open(args.session) as s:
        frames = [int(t) for t in parse_frames(args.frames).resolve(s.num_frames)]
    refine_session(args.session, "_warm", cfg, frames=[args.warm], model=model, progress=False, overwrite=True)
    t0 = time.perf_counter()
    refine_session(args.session, "_time", cfg, frames=frames, model=model, progress=False, overwrite=True)
    seconds = (time.perf_counter() - t0) / len(frames)
    print(f"{args.session.name}: {len(frames)} frames, {seconds:.3f} s/frame")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
