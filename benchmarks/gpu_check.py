"""The one-command GPU check: run it on any CUDA machine (``make gpu-check``).

    python benchmarks/gpu_check.py --out gpu_check                # everything below
    python benchmarks/gpu_check.py --out gpu_check --only parity  # what `make train-gpu` runs first

Steps (each one's output goes to ``OUT/gpu_check.log``, the numbers to ``OUT/gpu_check.json``):

* ``env``: torch and CUDA versions, the GPU, and whether nvdiffrast (extra ``gpu``) imports;
* ``parity``: nvdiffrast against the CPU rasterizer, on the shipped body in a 4-camera 512²
  rig (face ids, depth, barycentrics, every render pass; the first call's seconds include
  nvdiffrast's compilation), then the ``gpu``-marked tests (among them the refinement loop
  with ``device = "cuda"`` against the host's);
* ``copies``: one frame refined with ``device = "cuda"`` (learned predictor, 4 views 512²)
  under torch's profiler: the host<->device copies and synchronisations CUDA saw, by name and
  count, and the frame's seconds (what ``benchmarks/device_audit.py`` lists on the CPU);
* ``timings``: ``benchmarks/fit_profile.py frames`` on the same synthetic sessions (standard
  benchmark look, 4 views, 512² and 1024²) three ways, side by side: CUDA hidden; CUDA visible
  with the loop on the host (nvdiffrast and the network on the GPU, as before issue 19's item
  3); and the device-resident loop (``--set refine.device=cuda``): seconds per frame and per
  stage (fit, render, predictor, targets; with the loop on the GPU a stage's seconds include
  the GPU work queued before it, the frame's total is exact) and accuracy;
  ``benchmarks/bench_net.py`` per view (the lite predictor on CPU and GPU, the paper network).

A step that fails is recorded and the next one runs; the exit status is 1 if any failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("env", "parity", "copies", "timings")


def _log(out: Path, text: str) -> None:
    print(text, flush=True)
    with open(out / "gpu_check.log", "a") as f:
        f.write(text + "\n")


def _run(out: Path, cmd: list[str], env: dict | None = None, timeout: float = 900) -> tuple[int, str]:
    """Run a command, log its output, return (status, output)."""
    _log(out, "$ " + " ".join(cmd))
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        text, rc = p.stdout + p.stderr, p.returncode
    except subprocess.TimeoutExpired as exc:
        text, rc = f"{exc.stdout or ''}{exc.stderr or ''}\ntimed out after {timeout:.0f} s", 124
    _log(out, text.rstrip() + f"\n[exit {rc}, {time.perf_counter() - t0:.1f} s]\n")
    return rc, text


def step_env() -> dict:
    import torch

    from mvcap.render import nvdiffrast_available

    info = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
            "cuda_available": torch.cuda.is_available(), "cpus": os.cpu_count()}  # fmt: skip
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    info["nvdiffrast"] = nvdiffrast_available()
    return info


def step_parity(size: int = 512) -> dict:
    """nvdiffrast vs the CPU rasterizer on the body in the demo rig (at ``size``²)."""
    import numpy as np
    import torch

    from mvcap import render
    from mvcap.body import load_body_model
    from mvcap.demo import DEMO_RIG
    from mvcap.motions import sample_poses
    from mvcap.rigio import load_rig

    if not render.nvdiffrast_available():
        raise RuntimeError("needs CUDA and nvdiffrast (pip install 'mvcap[gpu]')")
    rig = load_rig(DEMO_RIG).without_distortion()
    W, H = rig[0].image_size
    rig = rig.with_image_size((round(W * size / max(W, H)), round(H * size / max(W, H))))
    model = load_body_model()
    pose = torch.as_tensor(sample_poses(np.random.default_rng(0), 2), dtype=torch.float32)
    body = model(pose_rotvecs=pose, transl=torch.tensor([[0.0, 0.0, 0.0], [0.05, 0.0, 0.1]]))
    verts = body.vertices
    faces = model.faces
    t0 = time.perf_counter()
    gpu = render.rasterize(rig, verts.cuda(), faces, backend="nvdiffrast")
    torch.cuda.synchronize()
    first_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(10):
        gpu = render.rasterize(rig, verts.cuda(), faces, backend="nvdiffrast")
    torch.cuda.synchronize()
    gpu_ms = (time.perf_counter() - t0) * 100
    t0 = time.perf_counter()
    cpu = render.rasterize(rig, verts, faces, backend="cpu")
    cpu_ms = (time.perf_counter() - t0) * 1000
    gpu = gpu.to("cpu")
    same = gpu.face_ids == cpu.face_ids
    both = same & cpu.mask
    faces_t = torch.as_tensor(np.asarray(faces), dtype=torch.long)
    kw = dict(template_vertices=verts[0])
    p_gpu = render.render_passes(gpu.to("cuda"), rig, verts.cuda(), faces_t.cuda(), **kw).images.cpu()
    p_cpu = render.render_passes(cpu, rig, verts, faces_t, **kw).images
    res = {
        "image": list(rig[0].image_size),
        "views": len(rig),
        "bodies": int(verts.shape[0]),
        "pixels_on_body": int(cpu.mask.sum()),
        "face_id_agreement": float(same.float().mean()),
        "mask_agreement": float((gpu.mask == cpu.mask).float().mean()),
        "depth_max_abs_m": float((gpu.depth[both] - cpu.depth[both]).abs().max()),
        "bary_max_abs": float((gpu.bary[both] - cpu.bary[both]).abs().max()),
        "passes_max_abs": float((p_gpu - p_cpu).abs()[both].max()),
        "nvdiffrast_first_call_s": first_s,
        "nvdiffrast_ms": gpu_ms,
        "cpu_ms": cpu_ms,
    }
    res["ok"] = res["face_id_agreement"] >= 0.99 and res["depth_max_abs_m"] < 1e-3 and res["passes_max_abs"] < 1e-2
    return res


def _sessions(work: Path, size: int, frames: int) -> Path:
    from mvcap.synth import generate_benchmark, load_scene_config

    folder = work / f"std_{size}"
    if not list(folder.glob("*.h5")):
        overrides = ["num_subjects=1", f"frames_per_subject={frames}", "partial_out_of_view_prob=0.0",
                     f"rig.image_size=[{size}, {size}]"]  # fmt: skip
        generate_benchmark(folder, load_scene_config(ROOT / "configs/bench/standard.toml", overrides), progress=False)
    return folder


def step_copies(work: Path, device: str = "cuda") -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from mvcap.body import load_body_model
    from mvcap.capture import Session
    from mvcap.config import load_config
    from mvcap.refine import (
        RefineConfig,
        estimate_appearance,
        load_frame_inputs,
        make_predictor,
        model_on_device,
        refine_frame,
    )
    from mvcap.resources import resource_path

    path = sorted(_sessions(work, 512, 2).glob("*.h5"))[0]
    cfg = load_config(RefineConfig, resource_path("configs/refine.toml"), ["predictor=learned", f"device={device}"])
    model = model_on_device(load_body_model(), device)
    sync = torch.cuda.synchronize if device != "cpu" else (lambda: None)  # "cpu": a dry run of this step
    with Session.open(path) as s:
        x = load_frame_inputs(s, 0)
        appearance = estimate_appearance(model, s.subject)
    predictor = make_predictor("learned", cfg)

    def frame():
        return refine_frame(model, x.rig, x.photos, x.init, predictor, cfg, appearance)

    frame()  # warm-up: nvdiffrast's plugin, cuDNN's choices, the caches
    sync()
    t0 = time.perf_counter()
    frame()
    sync()
    seconds = time.perf_counter() - t0
    # profiled last: after a profile the next frames ran 15x slower here (CPU, torch 2.13)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        res = frame()
        sync()
        seconds_profiled = time.perf_counter() - t0
    counts: dict[str, int] = {}
    for e in prof.events():
        if any(k in e.name for k in ("Memcpy", "memcpy", "Synchronize")):
            counts[e.name] = counts.get(e.name, 0) + 1
    return {"status": res.status, "seconds": round(seconds, 3), "seconds_profiled": round(seconds_profiled, 3),
            "events": counts}  # fmt: skip


def step_timings(out: Path, work: Path, sizes: list[int], frames: int, methods: str) -> dict:
    res = {}
    for size in sizes:
        folder = _sessions(work, size, frames)
        for label, hide, device in (("cpu", True, "cpu"), ("cuda", False, "cpu"), ("cuda-resident", False, "cuda")):
            env = dict(os.environ)
            if hide:
                env["CUDA_VISIBLE_DEVICES"] = ""
            cmd = [sys.executable, "benchmarks/fit_profile.py", "frames", str(folder), "--methods", methods,
                   "--max-frames", str(frames), "--set", f"refine.device={device}"]  # fmt: skip
            rc, text = _run(out, cmd, env)
            res[f"frames_{size}_{label}"] = {"exit": rc, "output": text[-4000:]}
    for size in sizes:  # the CPU rows and, with CUDA, the GPU rows of the predictors
        rc, text = _run(out, [sys.executable, "benchmarks/bench_net.py", "--size", str(size), "--paper"])
        res[f"net_{size}"] = {"exit": rc, "output": text[-3000:]}
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("gpu_check"))
    ap.add_argument("--only", default=",".join(STEPS), help=f"comma-separated steps of {', '.join(STEPS)}")
    ap.add_argument("--sizes", default="512,1024", help="image sizes of the timing sessions")
    ap.add_argument("--frames", type=int, default=3, help="frames per timing session")
    ap.add_argument("--methods", default="dense-learned-joint,dense-flow-joint")
    ap.add_argument("--work", type=Path, default=None, help="folder for the timing sessions (default: OUT/work)")
    args = ap.parse_args(argv)
    steps = [s for s in args.only.split(",") if s]
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        ap.error(f"unknown step(s) {unknown}; choose from {', '.join(STEPS)}")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    # steps run in separate calls add to one report
    report = json.loads((out / "gpu_check.json").read_text()) if (out / "gpu_check.json").exists() else {}
    failed = []
    for step in steps:
        _log(out, f"== {step}")
        t0 = time.perf_counter()
        try:
            if step == "env":
                report[step] = step_env()
            elif step == "copies":
                report[step] = step_copies(args.work or out / "work")
            elif step == "parity":
                report[step] = step_parity()
                rc, _ = _run(out, [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                                   "tests/test_render.py", "tests/test_devices.py"])  # fmt: skip
                report[step]["gpu_tests_exit"] = rc
                if not report[step]["ok"] or rc != 0:
                    failed.append(step)
            else:
                sizes = [int(s) for s in args.sizes.split(",")]
                report[step] = step_timings(out, args.work or out / "work", sizes, args.frames, args.methods)
                if any(v["exit"] != 0 for v in report[step].values()):
                    failed.append(step)
        except Exception as exc:  # noqa: BLE001 - recorded; the next step still runs
            report[step] = {"error": f"{type(exc).__name__}: {exc}"}
            failed.append(step)
        report.setdefault(step, {})
        if isinstance(report[step], dict):
            report[step]["seconds"] = round(time.perf_counter() - t0, 1)
        _log(out, json.dumps({k: v for k, v in report[step].items() if not isinstance(v, dict)}, indent=1))
        (out / "gpu_check.json").write_text(json.dumps(report, indent=1))
    _log(out, "failed: " + (", ".join(failed) or "none"))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
