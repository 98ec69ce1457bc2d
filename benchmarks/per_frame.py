"""Per-subject and per-frame accuracy of stored benchmark runs against the initial estimate.

    python benchmarks/per_frame.py BENCH_DIR RUN [RUN ...] [--frames N]

For each run (a result-run name as `mvcap bench` stores it, e.g. 'dense-flow-joint@cam00#hold'):
MPJPE / PVE / PA-PVE (mm) per subject and overall, the mean change against the init, and the
worst per-frame change of MPJPE against the init (positive = the run made that frame worse).
Frames a run left undone (failed) count as their init, as in `mvcap bench`.
"""

import argparse
from pathlib import Path

import numpy as np
import torch

from mvcap.body import load_body_model
from mvcap.capture import Session
from mvcap.metrics import evaluate_body


def _bodies(model, params):
    with torch.no_grad():
        out = model(**params.to_torch())
    return out.joints, out.vertices


def _per_frame(model, pred, gt):
    pj, pv = _bodies(model, pred)
    gj, gv = _bodies(model, gt)
    return np.array([[evaluate_body(pj[i : i + 1], gj[i : i + 1], pv[i : i + 1], gv[i : i + 1])[k]
                      for k in ("MPJPE", "PVE", "PA-PVE")] for i in range(len(pj))])  # fmt: skip


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bench_dir", type=Path)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--frames", type=int, default=10, help="first N frames per session (as the bench's max_frames)")
    args = ap.parse_args()
    model = load_body_model()
    paths = sorted(args.bench_dir.glob("*.h5"))
    rows = {r: [] for r in ["init", *args.runs]}
    for path in paths:
        with Session.open(path) as s:
            frames = list(range(min(args.frames, s.num_frames)))
            gt = s.read_ground_truth().slice(frames)
            init = s.read_init(require_valid=False)
            rows["init"].append(_per_frame(model, init.slice(frames), gt))
            for r in args.runs:
                res = s.read_results(r)
                p = res.params
                pose, betas, transl = p.pose_rotvecs.copy(), p.betas.copy(), p.transl.copy()
                undone = [t for t in frames if not res.done[t]]
                pose[undone], transl[undone] = init.pose_rotvecs[undone], init.transl[undone]
                betas[undone] = init.betas[undone]
                rows[r].append(_per_frame(model, type(p)(pose, betas, transl).slice(frames), gt))
    names = [p.stem for p in paths]
    print("| run | " + " | ".join(names) + " | all (MPJPE / PVE / PA-PVE) | change vs init | worst frame |")
    print("|---|" + "---|" * (len(names) + 3))
    base = np.concatenate(rows["init"])
    for r, per in rows.items():
        allv = np.concatenate(per)
        cells = [" / ".join(f"{x:.1f}" for x in m.mean(0)) for m in per]
        d = allv[:, 0] - base[:, 0]
        change = " / ".join(f"{x:+.1f}" for x in (allv.mean(0) - base.mean(0)))
        print(f"| {r} | " + " | ".join(cells) + f" | {' / '.join(f'{x:.1f}' for x in allv.mean(0))} "
              f"| {change} | {d.max():+.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
