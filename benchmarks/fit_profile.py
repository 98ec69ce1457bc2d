"""Profile the body fit: what one L-BFGS closure costs, stage by stage, and how many closures
each frame of a benchmark method runs.

    python benchmarks/fit_profile.py closure [--runs 30] [--dropout 0.4]
    python benchmarks/fit_profile.py frames SESSIONS_DIR [--config configs/bench/standard_quick.toml]
        [--methods sparse-gt-keypoints,dense-flow-joint] [--max-frames 3] [--set refine.fit.ftol=0]

``closure``: a dense 4-view fit (vertex targets, a share ``--dropout`` of them missing per view)
built like :func:`mvcap.fit.fit_body` builds it; median milliseconds of each stage's forward +
backward on its own (the body as the full model and as the fixed-shape body on the target
vertices; the regularisers the way they were computed before (rotation matrices -> rotvecs ->
Euler) and now; the data term) and of the whole closure.

``frames``: runs ``mvcap bench``'s methods on copies of the sessions (the originals are not
touched) and reports per frame: L-BFGS closures (loss + gradient evaluations), solver calls and
iterations, the seconds spent in the fit, rendering, the predictor and the rest, and the
methods' accuracy. Closure counts do not depend on the machine's load; seconds do (run it on a
quiet machine).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import roma
import torch


def _times_ms(fn, runs: int, warmup: int = 3) -> tuple[float, float]:
    """(median, min) milliseconds of ``runs`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times), min(times)


def profile_closure(runs: int, dropout: float, seed: int = 0) -> None:
    from mvcap.body import load_body_model
    from mvcap.cameras import cam_to_pixels, project, world_to_cam
    from mvcap.demo import DEMO_RIG
    from mvcap.fit import BodyFit, FitConfig, geman_mcclure, person_scale
    from mvcap.motions import perturb_like_regressor, sample_poses
    from mvcap.poses import limit_violation
    from mvcap.rigio import load_rig

    rig = load_rig(DEMO_RIG).without_distortion()
    model = load_body_model()
    rng = np.random.default_rng(seed)
    gt_pose = torch.as_tensor(sample_poses(rng, 1), dtype=torch.float32)
    betas = torch.as_tensor(rng.normal(size=(1, 10)) * 0.5, dtype=torch.float32)
    gt_t = torch.tensor([[0.0, 0.95, 0.0]])
    p, t, _ = perturb_like_regressor(rng, gt_pose.numpy(), gt_t.numpy(), betas[0].numpy(), model.parents.numpy())
    init_pose, init_t = torch.as_tensor(p, dtype=torch.float32), torch.as_tensor(t, dtype=torch.float32)
    with torch.no_grad():
        uv_all = project(rig, model(gt_pose, betas, gt_t).vertices[0]).float()[None]  # (1, V, N, 2)
    w_all = torch.as_tensor(rng.random(uv_all.shape[:-1]) >= dropout, dtype=torch.float32)
    keep = torch.nonzero((w_all > 0).flatten(0, 1).any(0)).flatten()
    cfg = FitConfig()
    cams = rig.tensors(dtype=torch.float32)
    R0 = roma.rotvec_to_rotmat(init_pose)

    def proj(points):
        return cam_to_pixels(world_to_cam(points, cams["R_world2cam"], cams["t_world2cam"]), cams["K"], None)

    with torch.no_grad():
        scale = person_scale(proj(model(rotmats=R0, betas=betas, transl=init_t).vertices))

    def data_term(uv_t, w_t):  # as fit_body built it before
        wsum = w_t.sum(-1).clamp_min(1e-6)

        def term(posed):
            sq = ((proj(posed.vertices) - uv_t) ** 2).sum(-1) / scale[..., None] ** 2
            return cfg.w_data * ((w_t * geman_mcclure(sq, cfg.gm_sigma)).sum(-1) / wsum).sum(-1)

        return term

    P = cams["K"] @ torch.cat([cams["R_world2cam"], cams["t_world2cam"][..., None]], -1)

    def data_term_now(uv_t, w_t):  # as fit_body builds it now (folded constants, one projection product)
        gm_scale = ((cfg.gm_sigma * scale) ** 2)[..., None]
        w_norm = w_t * (cfg.w_data / w_t.sum(-1).clamp_min(1e-6))[..., None]

        def term(posed):
            uvw = torch.einsum("vij,bnj->bvni", P[..., :3], posed.vertices) + P[:, None, :, 3]
            sq = ((uvw[..., :2] / uvw[..., 2:].clamp(min=1e-6) - uv_t) ** 2).sum(-1)
            return (w_norm * (sq / (gm_scale + sq))).sum(-1).sum(-1)

        return term

    fixed = model.fixed_shape(betas, keep)
    terms_full = [data_term(uv_all, w_all)]
    terms_kept = [data_term_now(uv_all[:, :, keep], w_all[:, :, keep])]
    fit_before = BodyFit(model, R0, betas, init_t, cfg.regularisers)
    fit_now = BodyFit(fixed, R0, betas, init_t, cfg.regularisers)
    prior = fit_now.prior
    reg = cfg.regularisers

    def backward(loss):
        loss.sum().backward()
        for x in fit_now.params + fit_before.params:
            x.grad = None

    def regularisers_before():  # rotmats -> rotvecs -> (limits: rotmats -> Euler), as before
        R = fit_before.rotmats()
        pose = roma.rotmat_to_rotvec(R)
        loss = reg.w_init * (fit_before.delta**2).sum((-1, -2))
        backward(loss + reg.w_limits * limit_violation(pose) + reg.w_prior * prior(pose))

    rotmats_leaf = R0.clone().requires_grad_()
    posed_leaf = model(rotmats=R0, betas=betas, transl=init_t)
    verts_leaf = posed_leaf.vertices[:, keep].detach().requires_grad_()

    class _Posed:
        vertices = verts_leaf

    class _PosedAll:
        vertices = posed_leaf.vertices.detach().requires_grad_()

    stages = [
        ("rotations (delta -> rotation matrices)", lambda: backward(fit_now.rotmats().sum())),
        (
            f"body, full model ({model.num_vertices} vertices)",
            lambda: backward(model(rotmats=rotmats_leaf, betas=betas, transl=init_t).vertices.sum()),
        ),
        (
            f"body, fixed shape ({keep.numel()} target vertices)",
            lambda: backward(fixed(rotmats_leaf, None, init_t).vertices.sum()),
        ),
        ("regularisers, before (rotvecs -> Euler)", regularisers_before),
        ("regularisers, now (from rotation matrices)", lambda: backward(fit_now.regularisers(fit_now.rotmats()))),
        ("data term, before (target vertices)", lambda: backward(data_term(uv_all, w_all)(_PosedAll))),
        ("data term, now (target vertices)", lambda: backward(terms_kept[0](_Posed))),
        ("closure, before (full model, old regularisers)", None),
        ("closure, now (BodyFit.objective + backward)", lambda: backward(fit_now.objective(terms_kept))),
    ]

    def closure_before():
        R = fit_before.rotmats()
        posed = model(rotmats=R, betas=betas, transl=fit_before.transl())
        pose = roma.rotmat_to_rotvec(R)
        loss = terms_full[0](posed) + reg.w_init * (fit_before.delta**2).sum((-1, -2))
        backward(loss + reg.w_limits * limit_violation(pose) + reg.w_prior * prior(pose))

    stages[7] = (stages[7][0], closure_before)
    print(f"closure stages, 1 body, {len(rig)} views, torch threads {torch.get_num_threads()}, median of {runs} runs")
    print("| stage (forward + backward) | median ms | min ms |")
    print("|---|---:|---:|")
    for name, fn in stages:
        med, low = _times_ms(fn, runs)
        print(f"| {name} | {med:.2f} | {low:.2f} |")


class _Probe:
    """Counts solver work and times named stages while the benchmark runs (by wrapping
    functions). Works on frames refined one by one and on batches of frames (``frame_batch``):
    per-frame figures are totals over the run divided by its frames, and the closures counted
    are each frame's own loss evaluations (a batched evaluation counts once per frame in it)."""

    def __init__(self):
        self.closures = 0
        self.batched = 0  # evaluations as run: a batch's shared evaluation counted once
        self.solves = 0
        self.iterations = 0
        self.seconds: dict[str, float] = defaultdict(float)

    def timed(self, name: str, fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - t0

        return wrapper

    def install(self):
        import mvcap.bench as bench
        import mvcap.fit as fit
        import mvcap.refine as refine

        probe = self
        solve = fit.BodyFit.solve
        saved = [(fit.BodyFit, "solve", solve), (bench, "keypoint_fit_frame", bench.keypoint_fit_frame)]
        saved += [(refine, n, getattr(refine, n)) for n in ("fit_body", "make_predictor")]
        saved += [
            (refine, n, getattr(refine, n)) for n in ("estimate_request", "_vertex_targets") if hasattr(refine, n)
        ]

        objective = fit.BodyFit.objective
        saved.append((fit.BodyFit, "objective", objective))
        has_stats = hasattr(fit, "SolverStats")  # older code: count closures as objective calls

        def counted_objective(self, terms):
            if not has_stats:
                probe.closures += 1
                probe.batched += 1
            return objective(self, terms)

        def counted_solve(self, *args, **kwargs):
            n = solve(self, *args, **kwargs)
            if not has_stats:
                probe.solves += 1
                probe.iterations += n
                return n
            stats = self.stats[-1] if isinstance(self.stats[-1], list) else [self.stats[-1]]
            probe.solves += len(stats)
            probe.iterations += sum(st.iterations for st in stats)
            probe.closures += sum(st.evaluations for st in stats)
            probe.batched += max(st.evaluations for st in stats)
            return n

        fit.BodyFit.solve, fit.BodyFit.objective = counted_solve, counted_objective
        refine.fit_body = self.timed("fit", refine.fit_body)
        for name, stage in (("estimate_request", "render"), ("_vertex_targets", "targets")):
            if hasattr(refine, name):
                setattr(refine, name, self.timed(stage, getattr(refine, name)))
        make_predictor = refine.make_predictor

        timed = self.timed

        class _TimedPredictor:  # the predictor, its calls timed, its attributes kept
            def __init__(self, predictor):
                self.predictor, self.call = predictor, timed("predictor", predictor.__call__)

            def __call__(self, *a, **k):
                return self.call(*a, **k)

            def __getattr__(self, name):
                return getattr(self.predictor, name)

        def timed_predictor(*args, **kwargs):
            return _TimedPredictor(make_predictor(*args, **kwargs))

        refine.make_predictor = timed_predictor
        bench.keypoint_fit_frame = self.timed("keypoint fit", bench.keypoint_fit_frame)  # its fit_body is timed too

        def undo():
            for owner, name, value in saved:
                setattr(owner, name, value)

        return undo


def profile_frames(sessions: Path, config: Path, methods: list[str], max_frames: int, overrides: list[str]) -> None:
    from mvcap.bench import BenchConfig, run_benchmark
    from mvcap.config import load_config

    bench = load_config(BenchConfig, config, [*overrides, f"max_frames={max_frames}"])
    paths = sorted(sessions.glob("*.h5"))
    if not paths:
        raise SystemExit(f"no session files (*.h5) in {sessions}; make some with `mvcap synth`")
    rows, accuracy = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        copies = []
        for p in paths:
            shutil.copy(p, Path(tmp) / p.name)
            copies.append(Path(tmp) / p.name)
        for method in methods:
            probe = _Probe()
            undo = probe.install()
            t0 = time.perf_counter()
            try:
                report = run_benchmark(
                    copies, replace(bench, methods=[method]), fresh=True, progress=False, log=lambda *_: None
                )
            finally:
                undo()
            accuracy[method] = report["methods"][method]
            rows.append((method, probe, time.perf_counter() - t0, accuracy[method]["frames"]))
    print(f"{len(paths)} sessions x {max_frames} frames, torch threads in the fit {bench.refine.threads}\n")
    print("| method | frames | closures/frame | batched closures/frame | solves/frame | iterations/frame "
          "| MPJPE mm | PVE mm |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for method, probe, _, n in rows:
        acc = accuracy[method]
        print(
            f"| {method} | {n} | {probe.closures / n:.1f} | {probe.batched / n:.1f} | {probe.solves / n:.1f} "
            f"| {probe.iterations / n:.1f} | {acc['MPJPE']:.2f} | {acc['PVE']:.2f} |"
        )
    print("\ns/frame: the run's wall time per frame (bench: the benchmark's own s/frame, the mean of the frames' "
          "recorded seconds)\n")  # fmt: skip
    print("| method | s/frame | bench s/frame | fit | render | predictor | targets | other |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for method, probe, wall, n in rows:
        total = wall / n
        parts = [probe.seconds.get(k, 0.0) / n for k in ("fit", "render", "predictor", "targets")]
        cells = " | ".join(f"{v:.2f} ({100 * v / total:.0f} %)" for v in (*parts, total - sum(parts)))
        print(f"| {method} | {total:.2f} | {accuracy[method]['s/frame']:.2f} | {cells} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    c = sub.add_parser("closure", help="one closure's stages (synthetic fit, no session needed)")
    c.add_argument("--runs", type=int, default=30)
    c.add_argument("--dropout", type=float, default=0.4, help="share of vertex targets missing per view")
    f = sub.add_parser("frames", help="closures per frame and stage seconds of benchmark methods")
    f.add_argument("sessions", type=Path, help="folder of synthetic sessions (mvcap synth)")
    f.add_argument("--config", type=Path, default=Path("configs/bench/standard_quick.toml"))
    f.add_argument("--methods", default="sparse-gt-keypoints,dense-flow-joint")
    f.add_argument("--max-frames", type=int, default=3)
    f.add_argument("--set", action="append", default=[], help="config override key=value")
    args = parser.parse_args()
    if args.mode == "closure":
        profile_closure(args.runs, args.dropout)
    else:
        profile_frames(args.sessions, args.config, args.methods.split(","), args.max_frames, args.set)


if __name__ == "__main__":
    main()
