"""Benchmark: CPU rasterization + all render passes, milliseconds per view.

    python benchmarks/bench_render.py [--views 8] [--repeats 7] [--sizes 256 512 1024]

Renders the shipped body model (``models/body/mvcap_body.npz``, rest T-pose, UV texture
when the model has UVs) or, without it, a body-sized geodesic ellipsoid with 13,520
faces, seen by ``--views`` cameras on a 3 m circle (focal length 1.2 x image size, so the
body fills most of the image height). Times the numba backend with 1 thread and with all
threads (``numba.set_num_threads`` + ``torch.set_num_threads``); median over repeats after
a warm-up; prints a markdown table. Passes: rgb, albedo, depth, normal, template, mask
(14 float32 channels), albedo from a random 1024² uint8 texture (the body) or vertex
colours (the fallback).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numba
import numpy as np
import torch

from mvcap import render
from mvcap.cameras import Camera, Rig

BODY = Path(__file__).resolve().parents[1] / "models" / "body" / "mvcap_body.npz"


def geosphere(freq: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit geodesic sphere with 20 * freq**2 outward faces."""
    t = (1 + 5**0.5) / 2
    V = np.array(
        [[-1, t, 0], [1, t, 0], [-1, -t, 0], [1, -t, 0], [0, -1, t], [0, 1, t],
         [0, -1, -t], [0, 1, -t], [t, 0, -1], [t, 0, 1], [-t, 0, -1], [-t, 0, 1]], float,
    )  # fmt: skip
    F = [[0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9], [5, 11, 4],
         [11, 10, 2], [10, 7, 6], [7, 1, 8], [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8],
         [3, 8, 9], [4, 9, 5], [2, 4, 11], [6, 2, 10], [8, 6, 7], [9, 8, 1]]  # fmt: skip
    pts, tris, n = [], [], freq
    for a, b, c in F:
        idx = {}
        for i in range(n + 1):
            for j in range(n + 1 - i):
                idx[i, j] = len(pts)
                pts.append((V[a] * (n - i - j) + V[b] * i + V[c] * j) / n)
        for i in range(n):
            for j in range(n - i):
                tris.append((idx[i, j], idx[i + 1, j], idx[i, j + 1]))
                if i + j < n - 1:
                    tris.append((idx[i + 1, j], idx[i + 1, j + 1], idx[i, j + 1]))
    P = np.array(pts)
    P /= np.linalg.norm(P, axis=1, keepdims=True)
    key = np.round(P * 1e6).astype(np.int64)
    _, first, inv = np.unique(key, axis=0, return_index=True, return_inverse=True)
    return P[first], inv.reshape(-1)[np.array(tris)]


def load_mesh():
    """(name, vertices (N,3), faces (F,3), template (N,3), appearance kwargs)."""
    if BODY.exists():
        from mvcap.body import load_body_model

        body = load_body_model()
        verts = body.template_vertices()[0].float()
        faces = body.faces.long()
        kw: dict = {}
        if body.uvs is not None and body.uv_faces is not None:
            rng = np.random.default_rng(0)
            tex = torch.tensor(
                rng.integers(0, 256, (1024, 1024, 3)), dtype=torch.uint8
            )  # like Subject
            kw = dict(texture=tex, uvs=body.uvs.float(), uv_faces=body.uv_faces.long())
        return "body (rest pose)", verts, faces, verts, kw
    P, F = geosphere(26)
    verts = torch.tensor(P * np.array([0.3, 0.9, 0.2]), dtype=torch.float32)
    return "ellipsoid fallback", verts, torch.tensor(F), verts, dict(vertex_colors=(verts + 1) / 2)


def make_rig(center: np.ndarray, views: int, size: int) -> Rig:
    cams = []
    for i in range(views):
        a = 2 * np.pi * i / views
        eye = center + np.array([3 * np.sin(a), 0.3, 3 * np.cos(a)])
        z = (center - eye) / np.linalg.norm(center - eye)
        x = np.cross(z, [0.0, 1.0, 0.0])
        x /= np.linalg.norm(x)
        R = np.stack([x, np.cross(z, x), z])
        K = np.array([[1.2 * size, 0, (size - 1) / 2], [0, 1.2 * size, (size - 1) / 2], [0, 0, 1]])
        cams.append(Camera(f"cam{i}", K, np.zeros(5), R, -R @ eye, (size, size)))
    return Rig(tuple(cams))


def timed(fn, repeats: int) -> tuple[float, float]:
    """Median (wall seconds, process CPU seconds) over ``repeats`` after one warm-up."""
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def run_case(rig, verts, faces, template, kw, repeats):
    """((wall, cpu) rasterize, (wall, cpu) passes, coverage) for all views of ``rig``."""
    state = {}

    def rast():
        state["f"] = render.rasterize(rig, verts, faces, backend="cpu")

    def passes():
        render.render_passes(state["f"], rig, verts, faces, template_vertices=template, **kw)

    t_rast, t_pass = timed(rast, repeats), timed(passes, repeats)
    return t_rast, t_pass, state["f"].mask.float().mean().item()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--views", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    args = ap.parse_args()

    name, verts, faces, template, kw = load_mesh()
    center = ((verts.max(0).values + verts.min(0).values) / 2).numpy().astype(float)
    all_threads = numba.config.NUMBA_NUM_THREADS
    print(
        f"mesh: {name}, {verts.shape[0]} vertices, {faces.shape[0]} faces; {args.views} views; "
        f"appearance: {', '.join(kw) or 'grey'}; "
        f"numba {numba.__version__}, torch {torch.__version__}"
    )
    rows = []
    for size in args.sizes:
        rig = make_rig(center, args.views, size)
        for threads in sorted({1, all_threads}):
            numba.set_num_threads(threads)
            torch.set_num_threads(threads)
            (t_r, c_r), (t_p, c_p), cover = run_case(rig, verts, faces, template, kw, args.repeats)
            rows.append((size, threads, t_r, t_p, c_r + c_p, cover))
    numba.set_num_threads(all_threads)
    V = args.views
    print()
    print(
        "| image | threads | rasterize ms/view | passes ms/view | total ms/view "
        "| total CPU ms/view | coverage |"
    )
    print("|---|---|---|---|---|---|---|")
    for size, threads, t_r, t_p, cpu, cover in rows:
        print(
            f"| {size}² | {threads} | {1e3 * t_r / V:.2f} | {1e3 * t_p / V:.2f} | "
            f"{1e3 * (t_r + t_p) / V:.2f} | {1e3 * cpu / V:.2f} | {100 * cover:.1f} % |"
        )
    print(
        "\nms/view: wall-clock median / number of views; CPU: process CPU time (all threads), "
        "which a busy machine inflates less than wall time."
    )


if __name__ == "__main__":
    main()
