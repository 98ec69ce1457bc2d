"""``mvcap bench``: run named methods over benchmark sessions and tabulate accuracy.

A benchmark is a folder of session files with ground truth (``mvcap synth``). A method
name is ``<kind>[@<camera>[+<camera>...]]``; ``@cam2`` restricts it to one view (single-view
fallback), ``@cam00+cam01+cam02`` to a subset of views (without ``@``, ``refine.views`` of the
config applies, e.g. ``--set refine.views=["cam00","cam01"]``). Kinds:

* ``init`` -- the stored initial estimates (regression-like errors);
* ``gt`` -- the ground-truth parameters themselves (sanity row: must read 0);
* ``sparse-gt-keypoints`` -- the fitter on projected ground-truth joints with pixel noise
  and dropout (what keypoint pipelines do);
* ``sparse-detector-keypoints`` -- the same fitter on the session's stored 2D detections
  (``mvcap detect``, or the simulated detector of ``SceneConfig.init = "keypoints"``: detector
  noise, dropout, left/right swaps and landmark offsets), after the robust triangulation's
  swap correction and outlier rejection; the landmarks that sit at SMPL joints (shoulders,
  elbows, wrists, knees, ankles) are the targets, weighted by confidence;
* ``dense-<predictor>-<fusion>`` -- the refinement loop, predictor ``oracle``, ``flow`` or
  ``learned`` or a per-round schedule such as ``learned:flow`` (round 1 learned, then flow),
  fusion ``joint`` or ``refit``.

Results of each method are stored in the sessions as result runs named after the method,
so an interrupted benchmark resumes. The table (markdown) and a JSON file report MPJPE,
PA-MPJPE, N-MPJPE, PVE, PA-PVE, N-PVE (mm, world frame, no alignment for MPJPE/PVE), the
displacement end-point error of the predictor on the initial estimate (EPE, px over
rendered pixels, dense methods only) and wall seconds per frame.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mvcap.body import BodyModel, BodyParams, load_body_model
from mvcap.capture import Session
from mvcap.config import to_dict
from mvcap.metrics import METRIC_KEYS, epe, evaluate_body
from mvcap.refine import (
    Appearance,
    RefineConfig,
    estimate_appearance,
    estimate_request,
    keypoint_fit_frame,
    keypoint_targets,
    load_frame_inputs,
    make_predictor,
    refine_session,
    subject_appearance,
    write_frame_result,
)
from mvcap.subject import Subject

__all__ = ["BenchConfig", "run_benchmark", "format_table", "parse_method", "method_appearance"]


@dataclass(frozen=True)
class BenchConfig:
    """What ``mvcap bench`` runs (``configs/bench/methods.toml``)."""

    methods: tuple[str, ...] = ("init", "gt")
    max_frames: int = 0  # per session; 0 = all
    keypoint_noise_px: float = 2.0
    keypoint_dropout: float = 0.1
    epe_frames: int = 5  # frames per session used for the EPE column
    seed: int = 0
    # appended to result-run names and table rows as "method#tag": compare another weights
    # file or setting without overwriting (or resuming) the stored runs of the plain methods
    tag: str = ""
    refine: RefineConfig = field(default_factory=RefineConfig)

    def __post_init__(self):
        if "/" in self.tag or "#" in self.tag:
            raise ValueError(f"tag must not contain '/' or '#', got {self.tag!r}")
        for name in self.methods:  # a misspelt method fails now, not after the others have run
            parse_method(name, self.refine)


SPARSE_KINDS = ("sparse-gt-keypoints", "sparse-detector-keypoints")

# method suffix -> RefineConfig.appearance; "+noise<std>" / "+brightness<std>" pass through as they are
APPEARANCE_SUFFIXES = {"notexture": "none", "wrongtexture": "wrong"}


def parse_method(name: str, base: RefineConfig) -> tuple[str, RefineConfig | None]:
    """'dense-flow-refit@cam2' -> ("dense", RefineConfig(predictor=flow, fusion=refit, views=(cam2,))).

    Ablations of the estimate's appearance (:attr:`RefineConfig.appearance`): '+notexture'
    (uniform grey), '+wrongtexture' (another person's texture), '+noise30' (per-texel noise,
    std in 8-bit levels) or '+brightness25' (a brightness shift), e.g.
    'dense-learned-joint+wrongtexture'."""
    head, _, view = name.partition("@")
    head, _, suffix = head.partition("+")
    if view and not all(view.split("+")):
        raise ValueError(f"method {name!r}: '@' takes camera names joined by '+', e.g. @cam00+cam01")
    if suffix:
        try:
            base = dataclasses.replace(base, appearance=APPEARANCE_SUFFIXES.get(suffix, suffix))
        except ValueError:
            known = [f"+{k}" for k in APPEARANCE_SUFFIXES] + ["+noise<std>", "+brightness<std>"]
            raise ValueError(f"unknown method suffix '+{suffix}'; use one of {known}") from None
    kind = head
    # '@a+b' names the views; without it the config's refine.views (default: all) applies
    views = tuple(view.split("+")) if view else tuple(base.views)
    if kind in ("init", "gt"):
        if view:
            raise ValueError(f"method {name!r}: '@view' only applies to fitted methods")
        return kind, None
    if kind in SPARSE_KINDS:
        return kind, dataclasses.replace(base, views=views)
    parts = kind.split("-")
    if len(parts) == 3 and parts[0] == "dense":  # a schedule: learned:flow (methods are comma-joined)
        predictor = parts[1].replace(":", ",")
        return "dense", dataclasses.replace(base, predictor=predictor, fusion=parts[2], views=views)
    raise ValueError(
        f"unknown method {name!r}; use init, gt, sparse-gt-keypoints, sparse-detector-keypoints or "
        "dense-<oracle|flow|learned>-<joint|refit> (a per-round schedule: dense-learned:flow-joint), "
        "optionally with @<camera>[+<camera>...]"
    )


@functools.lru_cache(maxsize=2)
def _wrong_subject(texture_size: int) -> Subject:
    from mvcap.synth import SubjectConfig, make_subject

    # a fixed synthetic person none of the benchmark subjects is (its own seed stream)
    rng = np.random.default_rng(987654321)
    return make_subject(rng, load_body_model(), "wrong", SubjectConfig(texture_size=texture_size))


def method_appearance(model: BodyModel, subject: Subject | None, mode: str) -> Appearance:
    """The estimate's appearance for a benchmark method: :func:`mvcap.refine.estimate_appearance`,
    plus the "wrong" ablation (another synthetic person's texture, same texture size)."""
    if mode == "wrong":
        size = subject.texture.shape[0] if subject is not None and subject.texture is not None else 512
        return subject_appearance(model, _wrong_subject(int(size)))
    return estimate_appearance(model, subject, mode)


def _frames(session: Session, max_frames: int) -> list[int]:
    T = session.num_frames
    return list(range(T if max_frames <= 0 else min(T, max_frames)))


def _detector_targets(session: Session, sub, frames, model: BodyModel) -> dict:
    """Joint targets (1, V', 24, 2) per frame from the session's stored detections of the views
    ``sub``: swap-corrected and outlier-rejected by the robust triangulation (as ``mvcap init``
    does), in the undistorted image; the landmarks defined at an SMPL joint only."""
    from mvcap.cameras import undistort_points
    from mvcap.detect import KEYPOINT_FORMAT
    from mvcap.fit import Targets
    from mvcap.initialize import mediapipe_keypoint_definition
    from mvcap.triangulate import triangulate_keypoints

    if not session.has_detections or session.keypoint_format != KEYPOINT_FORMAT:
        raise ValueError(
            f"{session.path}: sparse-detector-keypoints needs {KEYPOINT_FORMAT} detections; generate the "
            'benchmark with init = "keypoints" (configs/bench/studio.toml) or run `mvcap detect`'
        )
    view_idx = [session.rig.index(n) for n in sub.names]
    kp = session.read_keypoints(frames)[:, view_idx].astype(np.float64)  # (F, V', 33, 3)
    if len(sub) >= 2:
        tri = triangulate_keypoints(sub, kp)
        kp, use = tri.keypoints, tri.inliers
    else:  # one view: nothing to triangulate against; the detections as they are
        use = kp[..., 2] > 0
    d = mediapipe_keypoint_definition(model)
    at_joint = (d.joint_weights.max(1) == 1.0) & (d.vertex_weights.sum(1) == 0)  # (33,)
    ks = np.flatnonzero(at_joint)
    js = d.joint_weights[ks].argmax(1)
    out = {}
    for i, t in enumerate(frames):
        uv = np.zeros((len(sub), 24, 2))
        w = np.zeros((len(sub), 24))
        uv[:, js] = np.nan_to_num(kp[i][:, ks, :2])
        w[:, js] = np.where(use[i][:, ks] & np.isfinite(kp[i][:, ks, :2]).all(-1), kp[i][:, ks, 2], 0.0)
        uv = undistort_points(sub, torch.as_tensor(uv)).numpy()
        out[t] = Targets(
            torch.as_tensor(uv, dtype=torch.float32)[None], torch.as_tensor(w, dtype=torch.float32)[None], "joints"
        )
    return out


def _run_keypoints(
    path: Path, name: str, cfg: RefineConfig, bench: BenchConfig, model: BodyModel, frames, kind="sparse-gt-keypoints"
):
    with Session.open(path, mode="a") as s:
        rig = s.rig
        view_idx = [rig.index(n) for n in cfg.views] if cfg.views else list(range(len(rig)))
        sub = rig.subset([rig.names[i] for i in view_idx])
        gt, init = s.read_ground_truth(), s.read_init(require_valid=False)
        subject = s.subject
        detected = kind == "sparse-detector-keypoints"
        writer = s.results_run(
            name,
            config={
                "method": name,
                "targets": "stored detections" if detected else "projected ground-truth joints",
                "noise_px": None if detected else bench.keypoint_noise_px,
                "dropout": None if detected else bench.keypoint_dropout,
                "fit": to_dict(cfg.fit),
            },
        )
        done = writer.done_frames()
        todo = [t for t in frames if not done[t]]
        stored = _detector_targets(s, sub, todo, model) if detected and todo else {}
        for t in todo:
            noise_rng = np.random.default_rng([bench.seed, t])  # same noise whatever was resumed
            if detected:
                targets = stored[t]
            else:
                with torch.no_grad():
                    joints = model(**gt.slice(t).to_torch()).joints[0]
                targets = keypoint_targets(sub, joints, bench.keypoint_noise_px, bench.keypoint_dropout, noise_rng)
            start = init[t]
            if subject is not None:
                start = BodyParams(start.pose_rotvecs, np.asarray(subject.betas), start.transl)
            res = keypoint_fit_frame(model, sub, targets, start, cfg.fit)
            write_frame_result(writer, t, res, len(rig), view_idx)


def _epe_for(path: Path, cfg: RefineConfig, model: BodyModel, frames) -> list[float]:
    """EPE of the predictor against the oracle field on the initial estimate's render."""
    out = []
    with Session.open(path) as s:
        gt = s.read_ground_truth()
        template = model.template_vertices()[0]
        subject = s.subject
        appearance = method_appearance(model, subject, cfg.appearance)
        # one predictor per session (the learned one loads the subject's adapted network)
        predictor = None if cfg.predictor == "oracle" else make_predictor(cfg.predictor, cfg, subject=subject)
        for t in frames:
            inputs = load_frame_inputs(s, t, cfg.views)
            with torch.no_grad():
                vertices_world = model(**inputs.init.to_torch()).vertices[0]
                gt_verts = model(**gt.slice(t).to_torch()).vertices[0]
            pinhole = inputs.rig.without_distortion()
            req = estimate_request(model, pinhole, inputs.photos, vertices_world, appearance, template)
            pred = (predictor or make_predictor(cfg.predictor, cfg, gt_verts))(req)
            truth = make_predictor("oracle", cfg, gt_verts)(req)
            out.append(epe(pred.flow, truth.flow, req.fragments.mask))
    return out


def _evaluate(path: Path, params, frames, model: BodyModel) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    with Session.open(path) as s:
        gt = s.read_ground_truth().slice(frames)
    with torch.no_grad():
        g = model(**gt.to_torch())
        p = model(**params.slice(frames).to_torch())
    return p.joints, g.joints, p.vertices, g.vertices


def run_benchmark(
    session_paths: list[Path],
    bench: BenchConfig,
    model: BodyModel | None = None,
    fresh: bool = False,
    progress: bool = True,
    log=print,
) -> dict:
    """Run every method on every session; return {"methods": {name: metrics}, ...}."""
    model = model or load_body_model()
    if not session_paths:
        raise ValueError("no benchmark sessions given; generate them with `mvcap synth`")
    results = {}
    for name in bench.methods:
        kind, cfg = parse_method(name, bench.refine)
        run = f"{name}#{bench.tag}" if bench.tag else name
        t0 = time.perf_counter()
        pj, gj, pv, gv, secs, epes = [], [], [], [], [], []
        for path in session_paths:
            with Session.open(path) as s:
                if not s.has_ground_truth:
                    raise ValueError(f"{path} has no ground truth; the benchmark needs synthetic sessions")
                frames = _frames(s, bench.max_frames)
                if kind == "init":
                    params = s.read_init(require_valid=False)
                elif kind == "gt":
                    params = s.read_ground_truth()
            if kind in SPARSE_KINDS:
                if fresh:
                    _delete_run(path, run)
                _run_keypoints(path, run, cfg, bench, model, frames, kind)
            elif kind == "dense":
                failed: list = []  # frames refinement gave up on (out of view, diverged) score as their init
                with Session.open(path) as s:
                    appearance = method_appearance(model, s.subject, cfg.appearance)
                refine_session(
                    path,
                    run,
                    cfg,
                    frames=frames,
                    model=model,
                    overwrite=fresh,
                    progress=progress,
                    appearance=appearance,
                    failures=failed,
                )
                if bench.epe_frames > 0:
                    epes += _epe_for(path, cfg, model, frames[: bench.epe_frames])
            if kind in (*SPARSE_KINDS, "dense"):
                with Session.open(path) as s:
                    res = s.read_results(run)
                    params = res.params
                    missing = [t for t in frames if not res.done[t]]
                    if missing:
                        params = _fill_from_init(params, s.read_init(require_valid=False), missing)
                secs += [float(x) for x in np.nan_to_num(res.seconds[frames])]
            a, b, c, d = _evaluate(path, params, frames, model)
            pj.append(a), gj.append(b), pv.append(c), gv.append(d)
        metrics = evaluate_body(torch.cat(pj), torch.cat(gj), torch.cat(pv), torch.cat(gv))
        metrics["EPE"] = float(np.mean(epes)) if epes else float("nan")
        metrics["s/frame"] = float(np.mean(secs)) if secs else 0.0
        metrics["frames"] = int(sum(x.shape[0] for x in pj))
        results[run] = metrics
        log(
            f"{run}: "
            + ", ".join(f"{k} {v:.1f}" for k, v in metrics.items() if k in METRIC_KEYS)
            + f" ({time.perf_counter() - t0:.0f} s)"
        )
    return {"methods": results, "sessions": [str(p) for p in session_paths], "config": to_dict(bench)}


def _fill_from_init(params, init, frames: list[int]):
    """A failed frame keeps its initial estimate (what a capture would keep), with the run's
    shape (the subject's) where the run has one."""
    pose, betas, transl = params.pose_rotvecs.copy(), params.betas.copy(), params.transl.copy()
    pose[frames], transl[frames] = init.pose_rotvecs[frames], init.transl[frames]
    known = np.flatnonzero(np.isfinite(betas).all(-1))
    betas[frames] = betas[known[0]] if known.size else init.betas[frames]
    return BodyParams(pose, betas, transl)


def _delete_run(path: Path, name: str) -> None:
    with Session.open(path, mode="a") as s:
        if name in s.result_names():
            s.delete_results(name)


def format_table(report: dict) -> str:
    cols = list(METRIC_KEYS) + ["EPE", "s/frame"]
    lines = ["| method | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for name, m in report["methods"].items():
        cells = []
        for c in cols:
            v = m.get(c, float("nan"))
            cells.append("–" if v != v else (f"{v:.2f}" if c == "s/frame" else f"{v:.1f}"))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def save_report(report: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str))
