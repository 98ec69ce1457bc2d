"""Throughput of ``mvcap batch`` with 1 and 2 local Ray workers on one take, and its results
against a sequential run (``mvcap refine``'s refine_session) of the same frames.

    python benchmarks/batch_scaling.py                 # 20 frames, 4 views 512², learned predictor
    python benchmarks/batch_scaling.py --frames 8 --predictor flow --size 256   # a quick look

Run it on a quiet machine with at least 3 idle cores (2 workers + this process, which reads the
frames and writes the results). The take is the standard benchmark's scene
(``configs/bench/standard.toml``, one subject, ``--frames`` frames, no partly out-of-view
frames) and the refinement the shipped ``configs/refine.toml`` with ``--predictor``. One local
Ray (as many CPUs as the most workers) is started once; each timing is one ``refine_batch``
call on a fresh copy of the take: its wall time with the workers' start-up (importing mvcap,
loading the body model) and the frames alone (``timings["refine"]``, from the first task sent
to the last result written; the predictor loads on a worker's first task). Prints a Markdown table
for docs/BENCHMARKS.md and writes it with the raw numbers to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _take(work: Path, frames: int, size: int, views: int) -> Path:
    from mvcap.synth import generate_benchmark, load_scene_config

    folder = work / f"take_{frames}f_{views}v_{size}"
    path = folder / "subject00.h5"
    if not path.exists():
        overrides = [
            "num_subjects=1",
            f"frames_per_subject={frames}",
            "partial_out_of_view_prob=0.0",
            f"rig.num_cameras={views}",
            f"rig.image_size=[{size}, {size}]",
        ]
        cfg = load_scene_config(ROOT / "configs" / "bench" / "standard.toml", overrides)
        generate_benchmark(folder, cfg, progress=False)
    return path


def _fresh(take: Path, work: Path, name: str) -> Path:
    dst = work / f"{name}.h5"
    dst.unlink(missing_ok=True)
    shutil.rmtree(work / f"{name}.h5.results", ignore_errors=True)
    shutil.copy(take, dst)
    return dst


def _diff(a, b, frames) -> dict:
    """Largest differences of two results runs over ``frames`` (0 = bit for bit)."""
    out = {}
    for name in ("pose_rotvecs", "transl", "residual_px"):
        x, y = getattr(a, name)[frames], getattr(b, name)[frames]
        out[name] = float(np.nanmax(np.abs(x - y))) if x.size else 0.0
    out["same_iterations"] = bool(np.array_equal(a.iterations[frames], b.iterations[frames]))
    out["bitwise"] = all(
        np.array_equal(getattr(a, n)[frames], getattr(b, n)[frames], equal_nan=True)
        for n in ("pose_rotvecs", "transl", "residual_px")
    )
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--size", type=int, default=512, help="image size (square)")
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--predictor", default="learned", choices=["flow", "learned"])
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts to time")
    ap.add_argument("--no-sequential", action="store_true", help="skip the sequential reference run")
    ap.add_argument("--work", type=Path, default=None, help="folder for the take (default: a temp folder)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "batch_scaling.json")
    ap.add_argument("--set", action="append", default=[], help="refine config override key=value (e.g. frame_batch=5)")
    args = ap.parse_args(argv)

    import ray

    from mvcap.batch import BatchConfig, RefineJob, refine_batch
    from mvcap.body import load_body_model
    from mvcap.capture import Session
    from mvcap.config import load_config
    from mvcap.refine import RefineConfig, refine_session

    counts = [int(w) for w in args.workers.split(",")]
    work = args.work or Path(tempfile.mkdtemp(prefix="mvcap_batch_scaling_"))
    work.mkdir(parents=True, exist_ok=True)
    model = load_body_model()
    take = _take(work, args.frames, args.size, args.views)
    cfg = load_config(RefineConfig, "refine.toml", [f"predictor={args.predictor}", *args.set])
    frames = list(range(args.frames))
    rows, runs = [], {}

    if not args.no_sequential:
        # the thread pools of a Ray worker (mvcap.batch: one CPU each), so that the reference
        # sees the same floating-point sums and the comparison of throughput is fair
        import numba
        import torch

        torch.set_num_threads(1)
        numba.set_num_threads(1)
        path = _fresh(take, work, "sequential")
        t0 = time.perf_counter()
        runs["sequential"] = refine_session(path, "bench", cfg, model=model, progress=False, failures=[])
        rows.append({"how": "sequential (refine_session, this process, 1 thread)", "workers": 0,
                     "seconds": time.perf_counter() - t0})  # fmt: skip

    ray.init(num_cpus=max(counts), include_dashboard=False, configure_logging=False)
    try:
        for w in counts:
            path = _fresh(take, work, f"ray{w}")
            t0, timings = time.perf_counter(), {}
            (res,) = refine_batch([RefineJob(path, "bench", cfg)], BatchConfig(workers=w), model, False, timings)
            rows.append({"how": f"mvcap batch, {w} local Ray worker(s)", "workers": w,
                         "seconds": time.perf_counter() - t0, "timings": timings})  # fmt: skip
            runs[f"ray{w}"] = res.results
            if res.failures:
                print(f"{w} worker(s): {len(res.failures)} failed frame(s): {res.failures[:3]}", file=sys.stderr)
    finally:
        ray.shutdown()

    with Session.open(take) as s:
        names = s.view_names
    done = {k: int(r.done[frames].sum()) for k, r in runs.items()}
    for row in rows:
        key = "sequential" if row["workers"] == 0 else f"ray{row['workers']}"
        row["frames_done"] = done[key]
        row["frames_per_min"] = 60.0 * done[key] / row["seconds"]
        # steady state: the frames alone, without the workers' start-up
        row["frames_per_min_refine"] = 60.0 * done[key] / row.get("timings", {}).get("refine", row["seconds"])
    base = next((r for r in rows if r["workers"] == 1), None)
    ref_key = "sequential" if "sequential" in runs else f"ray{counts[0]}"
    lines = [
        f"{args.frames}-frame take, {len(names)} views {args.size}², predictor {args.predictor}, "
        f"configs/refine.toml {' '.join(args.set)}; {os.cpu_count()} CPUs, "
        f"{platform.processor() or platform.machine()}",
        "",
        "| run | frames done | wall s | worker start s | frames/min | throughput vs 1 worker | "
        f"frames/min after start | vs 1 worker | results vs {ref_key} |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        key = "sequential" if row["workers"] == 0 else f"ray{row['workers']}"
        ratio = f"{row['frames_per_min'] / base['frames_per_min']:.2f}x" if base else "-"
        ratio_r = f"{row['frames_per_min_refine'] / base['frames_per_min_refine']:.2f}x" if base else "-"
        start = f"{row['timings']['workers']:.1f}" if "timings" in row else "-"
        common = [t for t in frames if runs[key].done[t] and runs[ref_key].done[t]]
        d = _diff(runs[key], runs[ref_key], common)
        row["vs_reference"] = d
        same = (
            "-"
            if key == ref_key
            else "bit for bit"
            if d["bitwise"]
            else f"max |Δpose| {d['pose_rotvecs']:.1e} rad, |Δtransl| {d['transl']:.1e} m"
        )
        lines.append(
            f"| {row['how']} | {row['frames_done']} | {row['seconds']:.1f} | {start} | {row['frames_per_min']:.1f} | "
            f"{ratio} | {row['frames_per_min_refine']:.1f} | {ratio_r} | {same} |"
        )
    table = "\n".join(lines)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows,
                                    "table": table}, indent=2))  # fmt: skip
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
