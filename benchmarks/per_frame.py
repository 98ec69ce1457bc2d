"""Per-subject and per-frame accuracy of stored benchmark runs against the initial estimate.

    python benchmarks/per_frame.py BENCH_DIR RUN [RUN ...] [--frames N]

For each run (a result-run name as `mvcap bench` stores it, e.g. 'dense-flow-joint@cam00#hold'):
MPJPE / PVE / PA-PVE (mm) per subject and overall, the mean change against the init, and the
worst per-frame change of MPJPE against the init (positive = the run made that frame worse).
Frames a run left undone (failed) count as their init, as in `mvcap bench`.
``--joints K`` adds, per run and subject, the K joints with the largest error after aligning
the pelvis (mm, mean over the frames): where a run loses.
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
    """(F, 3) MPJPE / PVE / PA-PVE per frame, and (J,) each joint's pelvis-aligned error (mm)."""
    pj, pv = _bodies(model, pred)
    gj, gv = _bodies(model, gt)
    per = np.array([[evaluate_body(pj[i : i + 1], gj[i : i + 1], pv[i : i + 1], gv[i : i + 1])[k]
                     for k in ("MPJPE", "PVE", "PA-PVE")] for i in range(len(pj))])  # fmt: skip
    joints = 1000.0 * ((pj - pj[:, :1]) - (gj - gj[:, :1])).norm(dim=-1).mean(0).numpy()
    return per, joints


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bench_dir", type=Path)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--frames", type=int, default=10, help="first N frames per session (as the bench's max_frames)")
    ap.add_argument("--joints", type=int, default=0, help="also list each run's K worst joints per subject")
    args = ap.parse_args()
    if args.joints < 0:
        ap.error(f"--joints takes a count >= 0, got {args.joints}")
    model = load_body_model()
    paths = sorted(args.bench_dir.glob("*.h5"))
    rows = {r: [] for r in ["init", *args.runs]}
    joints = {r: [] for r in rows}
    for path in paths:
        with Session.open(path) as s:
            frames = list(range(min(args.frames, s.num_frames)))
            gt = s.read_ground_truth().slice(frames)
            init = s.read_init(require_valid=False)
            per, j = _per_frame(model, init.slice(frames), gt)
            rows["init"].append(per)
            joints["init"].append(j)
            for r in args.runs:
                res = s.read_results(r)
                p = res.params
                pose, betas, transl = p.pose_rotvecs.copy(), p.betas.copy(), p.transl.copy()
                undone = [t for t in frames if not res.done[t]]
                pose[undone], transl[undone] = init.pose_rotvecs[undone], init.transl[undone]
                betas[undone] = init.betas[undone]
                per, j = _per_frame(model, type(p)(pose, betas, transl).slice(frames), gt)
                rows[r].append(per)
                joints[r].append(j)
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
    if args.joints:
        print(f"\nworst {args.joints} joints per subject (pelvis-aligned, mm)")
        for r, per_subject in joints.items():
            for name, j in zip(names, per_subject):
                worst = np.argsort(-j)[: args.joints]
                print(f"{r} {name}: " + ", ".join(f"{model.joint_names[k]} {j[k]:.1f}" for k in worst))


if __name__ == "__main__":
    main()
