"""Did refinement help this capture? Leave-one-view-out cross-validation without ground truth.

A real capture has no markers to score against. What it has is redundancy: every camera is
an independent witness. ``validate_run`` holds one camera out, redoes what the run did with
the others (keypoint init from their detections, then the run's refinement) and measures
both estimates in the camera it left out, against evidence the fit never saw:

* **keypoints**: projected body landmarks (the detector's landmark definitions on our mesh)
  vs the detector's confident keypoints, median and 90th percentile, in pixels and in % of
  the person's pixel height in that view (so views and image sizes compare);
* **silhouette IoU**: the rendered body vs the detector's person mask;
* **photometric error**: the subject's textured render (albedo) vs the photo, mean absolute
  difference in 8-bit levels over the rendered body's pixels.

Per held-out camera the verdict compares the refined estimate with the initial one: it
*improved* the capture when neither the keypoint distance nor the IoU got worse beyond a
tolerance and at least one got better; it made it *worse* when either got worse beyond the
tolerance. ``in_view`` rows measure the run's own stored results against the stored initial
estimates in the views the run used (the same evidence for both), frame by frame.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from mvcap.body import BodyModel, BodyParams, load_body_model
from mvcap.cameras import Rig
from mvcap.config import ConfigError, from_dict
from mvcap.cues import CueConfig
from mvcap.evidence import Agreement, EvidenceConfig, ViewEvidence, agreement, view_evidence
from mvcap.initialize import InitConfig, fit_keypoints
from mvcap.keypoints import keypoint_set
from mvcap.refine import (
    RefineConfig,
    estimate_appearance,
    frame_evidence,
    make_predictor,
    model_on_device,
    refine_frame,
    subject_appearance,
)
from mvcap.render import canvas_size, pad_views, undistort_images
from mvcap.rigrefine import rig_fit_warnings
from mvcap.triangulate import match_swaps, reprojection_errors, triangulate_keypoints

__all__ = [
    "ValidateConfig",
    "HoldoutRow",
    "CameraVerdict",
    "ValidationReport",
    "validate_run",
    "format_report",
    "report_path",
    "load_report",
    "disputed_sentence",
    "verdict_sentence",
    "OTHERS_NOTE",
    "Interval",
    "RunComparison",
    "compare_reports",
]

#: a refinement under test: (frame, rig of the fitting views, their undistorted photos
#: (V, H, W, 3), initial pose_rotvecs (24, 3), betas (K,), transl (3,)) -> (pose_rotvecs, transl)
Refiner = Callable[[int, Rig, np.ndarray, torch.Tensor, torch.Tensor, torch.Tensor], tuple[np.ndarray, np.ndarray]]


class ValidateError(ConfigError):
    """The capture cannot be cross-validated as asked; the message says what is missing."""


@dataclass(frozen=True)
class ValidateConfig:
    """Cross-validation settings (``[validate]`` of a run config)."""

    frames: str = "::10"  # the frames to check (mvcap.frames grammar); only the run's done frames count
    evidence: EvidenceConfig = field(default_factory=EvidenceConfig)
    keypoint_tolerance_pct: float = 0.25  # a change smaller than this (% of height) is no change
    # a camera's detections with left and right exchanged (views from behind) are compared as
    # exchanged back: held out, against the other cameras' triangulation; in view, as the run's cues
    undo_swaps: bool = True
    # a held-out check whose detections sit farther than this (% of height, median) from the other
    # cameras' triangulation is "disputed": a detector is wrong there (another person, a mislabel)
    # and the keypoint distance measures it more than the body; counted and named, still judged
    dispute_pct: float = 5.0
    iou_tolerance: float = 0.01
    init: InitConfig = field(default_factory=InitConfig)

    def __post_init__(self):
        if self.keypoint_tolerance_pct < 0 or self.iou_tolerance < 0 or self.dispute_pct <= 0:
            raise ValueError("tolerances must be >= 0 and dispute_pct > 0")


@dataclass(frozen=True)
class HoldoutRow:
    """One frame with one camera held out: the init and the refined estimate, both fitted
    without that camera, measured in it. ``note`` says why a row has no numbers."""

    frame: int
    view: str
    init: Agreement | None
    result: Agreement | None
    note: str = ""
    # held out: the camera's detections against the other cameras' triangulation (% of height)
    disagreement_pct: float = math.nan


@dataclass(frozen=True)
class CameraVerdict:
    """Per held-out camera: medians over frames of the keypoint distance (% of height), means
    of IoU and photometric error, for init and result; verdict improved | unchanged | worse."""

    view: str
    frames: int
    init_keypoint_pct: float
    result_keypoint_pct: float
    init_iou: float
    result_iou: float
    init_photometric: float
    result_photometric: float
    verdict: str
    disputed: int = 0  # checks whose detections the other cameras dispute (ValidateConfig.dispute_pct)
    # held out: median over checks of the other cameras' triangulated keypoints against this
    # camera's detections (% of height): a body that follows the other cameras seldom gets closer
    others_keypoint_pct: float = math.nan

    @property
    def sentence(self) -> str:
        return verdict_sentence(self.view, self.verdict)


def verdict_sentence(view: str, verdict: str) -> str:
    """One camera's verdict in words (the terminal and the HTML report say the same)."""
    return {
        "improved": f"refinement improved this capture in {view}",
        "unchanged": f"refinement did not improve this capture in {view} (no measurable change)",
        "worse": f"refinement did not improve this capture in {view}: the result disagrees MORE with this camera",
        "no data": f"{view}: no frame could be checked",
    }[verdict]


@dataclass
class ValidationReport:
    """A cross-validation of one results run: held-out rows, per-camera verdicts, in-view rows
    (the run's own result vs the stored init in the views it used)."""

    session: str
    run: str
    predictor: str
    frames: list[int]
    holdout: list[HoldoutRow]
    cameras: list[CameraVerdict]
    in_view: list[HoldoutRow]
    in_view_cameras: list[CameraVerdict]
    seconds: float = 0.0
    rig_warnings: list[str] = field(default_factory=list)  # cameras the rig does not fit (mvcap rig refine)
    dispute_pct: float = ValidateConfig.dispute_pct  # what made a held-out check "disputed"

    @property
    def worse(self) -> list[str]:
        """Cameras in which the result disagrees more than the init did (held-out or in-view)."""
        return sorted({c.view for c in self.cameras + self.in_view_cameras if c.verdict == "worse"})

    @property
    def verdict(self) -> str:
        held = [c.verdict for c in self.cameras if c.verdict != "no data"]
        if not held:
            return "no data"
        if "worse" in held:
            return "worse"
        return "improved" if all(v == "improved" for v in held) else "mixed" if "improved" in held else "unchanged"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["verdict"] = self.verdict
        d["worse"] = self.worse
        return d


# ------------------------------------------------------------------------------------------
# verdicts
# ------------------------------------------------------------------------------------------
def _nan_stat(values, fn) -> float:
    a = np.asarray([v for v in values if v is not None and np.isfinite(v)], np.float64)
    return float(fn(a)) if a.size else math.nan


def camera_verdict(view: str, rows: list[HoldoutRow], cfg: ValidateConfig) -> CameraVerdict:
    """Summarise one camera's rows (init vs result) into a verdict (see the module doc)."""
    rows = [r for r in rows if r.init is not None and r.result is not None]
    ki = _nan_stat([r.init.keypoint_median_pct for r in rows], np.median)
    kr = _nan_stat([r.result.keypoint_median_pct for r in rows], np.median)
    ii = _nan_stat([r.init.iou for r in rows], np.mean)
    ir = _nan_stat([r.result.iou for r in rows], np.mean)
    pi = _nan_stat([r.init.photometric for r in rows], np.mean)
    pr = _nan_stat([r.result.photometric for r in rows], np.mean)
    if not rows or (math.isnan(ki) and math.isnan(ii)):
        verdict = "no data"
    else:
        dk = 0.0 if math.isnan(ki) or math.isnan(kr) else kr - ki  # > 0: worse
        di = 0.0 if math.isnan(ii) or math.isnan(ir) else ir - ii  # < 0: worse
        if dk > cfg.keypoint_tolerance_pct or di < -cfg.iou_tolerance:
            verdict = "worse"
        elif dk < -cfg.keypoint_tolerance_pct or di > cfg.iou_tolerance:
            verdict = "improved"
        else:
            verdict = "unchanged"
    disputed = int(sum(r.disagreement_pct > cfg.dispute_pct for r in rows))  # NaN (in view) compares False
    others = _nan_stat([r.disagreement_pct for r in rows], np.median)
    return CameraVerdict(view, len(rows), ki, kr, ii, ir, pi, pr, verdict, disputed, others)


# ------------------------------------------------------------------------------------------
# the cross-validation
# ------------------------------------------------------------------------------------------
def _select_frames(spec: str, candidates: np.ndarray, num_frames: int) -> list[int]:
    """The frames of ``spec`` (:mod:`mvcap.frames` grammar, over the session's frame numbers)
    that are among ``candidates`` (done and detected)."""
    from mvcap.frames import FrameSelectionError, parse_frames

    try:
        wanted = parse_frames(spec or "::1").resolve(num_frames, check=False)
    except FrameSelectionError as exc:
        raise ValidateError(str(exc)) from None
    return sorted(set(int(t) for t in wanted) & set(int(t) for t in candidates))


def _run_refiner(model: BodyModel, rcfg: RefineConfig, subject, session, definition) -> Refiner:
    """The run's refinement, redone on the fitting views only (their detections included), on
    the run's device (on the CPU when it was a GPU this machine lacks: same results up to
    rounding)."""
    if rcfg.device != "cpu" and not torch.cuda.is_available():
        rcfg = replace(rcfg, device="cpu")
    model = model_on_device(model, rcfg.device)
    predictor = make_predictor(rcfg.predictor, rcfg, subject=subject)
    appearance = estimate_appearance(model, subject, rcfg.appearance)
    cfg = replace(rcfg, views=())

    def refiner(t, rig, photos, pose0, betas, transl0):
        init = BodyParams(pose0.numpy()[None], betas.numpy()[None], transl0.numpy()[None])
        evidence = frame_evidence(session, t, rig, cfg.cues)
        res = refine_frame(model, rig, photos, init, predictor, cfg, appearance, None, evidence,
                           definition if evidence is not None else None)  # fmt: skip
        return res.pose_rotvecs, res.transl

    return refiner


def validate_run(
    session_path: str | Path,
    run: str,
    cfg: ValidateConfig = ValidateConfig(),
    holdout: list[str] | tuple[str, ...] | None = None,
    model: BodyModel | None = None,
    refiner: Refiner | None = None,
    progress: bool = True,
    in_view: bool = True,
) -> ValidationReport:
    """Cross-validate results run ``run`` of a session by leaving cameras out (module doc).

    holdout: cameras to hold out (default: every camera the run used; at least 2 others must
    remain for triangulation); refiner: the refinement to check (default: the run's own, from
    its stored config); in_view: also measure the stored result vs the stored init in the
    views the run used. Needs the session's detections (``mvcap detect``).
    """
    from tqdm import tqdm

    from mvcap.capture import Session

    t_start = time.perf_counter()
    model = model or load_body_model()
    with Session.open(session_path, "r") as s:
        if not s.has_detections:
            raise ValidateError(
                f"{session_path} has no detections: cross-validation measures the fit against an independent "
                f"detector's keypoints and masks; run `mvcap detect {session_path}` first"
            )
        res = s.read_results(run)
        rig = s.rig
        kset = keypoint_set(s.keypoint_format)
        definition = kset.definition(model)
        try:
            rcfg = from_dict(RefineConfig, dict(res.config), where=f"results run {run!r}")
            if "cues" not in res.config:  # a run from before the cues: redo it without them
                rcfg = replace(rcfg, cues=CueConfig(w_keypoints=0, w_silhouette=0, trust=False, guard=False))
        except (ValueError, TypeError) as exc:
            if refiner is None:
                raise ValidateError(f"run {run!r} has no usable refinement config ({exc}); pass a refiner") from exc
            rcfg = RefineConfig()
        run_views = list(rcfg.views) or list(rig.names)
        holdout = list(holdout) if holdout else list(run_views)
        unknown = [h for h in holdout if h not in rig.names]
        if unknown:
            raise ValidateError(f"unknown camera(s) {unknown}; this session has {list(rig.names)}")
        if len(run_views) - 1 < 2 and any(h in run_views for h in holdout):
            raise ValidateError(
                f"run {run!r} used {len(run_views)} camera(s): leaving one out leaves fewer than 2 to triangulate"
            )
        usable = np.flatnonzero(res.done & s.detections_written)
        frames = _select_frames(cfg.frames, usable, s.num_frames)
        if not frames:
            raise ValidateError(
                f"no frame of run {run!r} matches --frames {cfg.frames!r} and has detections "
                f"(done frames with detections: {usable.size})"
            )
        subject = s.subject
        appearance = subject_appearance(model, subject) if subject is not None else None
        if refiner is None:
            if rcfg.predictor == "oracle":
                raise ValidateError("the oracle predictor needs ground truth; cross-validation is for real captures")
            if subject is None:
                raise ValidateError(f"{session_path}: no subject stored; register the subject first")
            refiner = _run_refiner(model, rcfg, subject, s, definition)
        betas = np.asarray(subject.betas if subject is not None else res.betas[frames[0]], np.float32)
        kp_all = s.read_keypoints(frames)  # (F, V, K, 3)

        def evidence(t: int, view: str, keypoints: np.ndarray) -> ViewEvidence:
            """The view's evidence in frame t, with its keypoints (K, 3)."""
            masks = s.read_masks(t)
            photo = s.read_frame(t, views=[view])[0]
            mask = None if masks is None else masks[rig.index(view)]
            return view_evidence(rig.subset([view]), keypoints, mask, photo, cfg.evidence)

        rows: list[HoldoutRow] = []
        steps = [(h, t) for h in holdout for t in frames]
        bar = tqdm(total=len(steps), desc=f"validate {run}", unit="check", disable=not progress)
        for h in holdout:
            fit_names = [n for n in run_views if n != h]
            idx = [rig.index(n) for n in fit_names]
            rig_fit = rig.subset(fit_names)
            tri = triangulate_keypoints(rig_fit, kp_all[:, idx], cfg.init.triangulate, kset.flip_index, kset.names)
            masks = None
            if cfg.init.w_mask > 0:

                def masks(i, idx=idx):
                    m = s.read_masks(frames[i])
                    return None if m is None else [m[j] for j in idx]  # in [0, 1]; a list: per-view sizes

            init = fit_keypoints(model, rig_fit, tri, cfg.init, betas.astype(np.float64), definition, masks=masks)
            cam = rig.subset([h])
            kp_h = kp_all[:, rig.index(h)]
            if cfg.undo_swaps:
                kp_h = match_swaps(cam, kp_h, tri.points_world, cfg.init.triangulate, kset.flip_index)[1]
            # how far the camera's confident detections sit from the others' triangulation (px)
            apart = reprojection_errors(cam, tri.points_world, kp_h[:, None])[:, 0]
            apart = np.where(kp_h[..., 2] >= cfg.evidence.min_keypoint_confidence, apart, np.nan)
            for i, t in enumerate(frames):
                bar.update(1)
                if not init.fitted[i]:
                    rows.append(HoldoutRow(t, h, None, None, "too few keypoints in the other views to initialise"))
                    continue
                ev = evidence(t, h, kp_h[i])
                p0, tr0 = init.pose_rotvecs[i], init.transl[i]
                a_init = agreement(model, definition, cam, p0, betas, tr0, ev, appearance, cfg.evidence)
                photos = undistort_images(rig_fit, pad_views(s.read_frame(t, views=fit_names), canvas_size(rig_fit)))
                try:
                    pose, transl = refiner(
                        t,
                        rig_fit,
                        photos,
                        torch.as_tensor(p0, dtype=torch.float32),
                        torch.tensor(betas, dtype=torch.float32),  # a copy: the subject's array is read-only
                        torch.as_tensor(tr0, dtype=torch.float32),
                    )
                except Exception as exc:  # a failed refinement is a finding, not a crash
                    rows.append(HoldoutRow(t, h, a_init, None, f"refinement failed: {type(exc).__name__}: {exc}"))
                    continue
                a_res = agreement(model, definition, cam, pose, betas, transl, ev, appearance, cfg.evidence)
                height = ev.height_px if ev.height_px > 0 else math.nan
                rows.append(HoldoutRow(t, h, a_init, a_res, "", 100 * _nan_stat(apart[i], np.median) / height))
        bar.close()
        cameras = [camera_verdict(h, [r for r in rows if r.view == h], cfg) for h in holdout]

        view_rows: list[HoldoutRow] = []
        if in_view:
            stored_init = s.read_init(require_valid=False)
            run_idx = [rig.index(n) for n in run_views]
            kp_run = kp_all[:, run_idx]
            if cfg.undo_swaps and rcfg.cues.undo_swaps:  # the keypoints the run's cues saw
                kp_run = triangulate_keypoints(rig.subset(run_views), kp_run, cfg.init.triangulate, kset.flip_index,
                                               kset.names).keypoints  # fmt: skip
            for i, t in enumerate(frames):
                p0, tr0 = stored_init.pose_rotvecs[t], stored_init.transl[t]
                if not (np.isfinite(p0).all() and np.isfinite(tr0).all()):
                    continue
                for j, view in enumerate(run_views):
                    ev = evidence(t, view, kp_run[i, j])
                    cam = rig.subset([view])
                    a_init = agreement(model, definition, cam, p0, betas, tr0, ev, appearance, cfg.evidence)
                    a_res = agreement(model, definition, cam, res.pose_rotvecs[t], betas, res.transl[t], ev,
                                      appearance, cfg.evidence)  # fmt: skip
                    view_rows.append(HoldoutRow(t, view, a_init, a_res))
        in_view_cameras = [camera_verdict(v, [r for r in view_rows if r.view == v], cfg) for v in run_views]
    return ValidationReport(
        str(session_path),
        run,
        rcfg.predictor,
        frames,
        rows,
        cameras,
        view_rows,
        in_view_cameras if in_view else [],
        time.perf_counter() - t_start,
        rig_fit_warnings(rig, kp_all, kset.flip_index),
        cfg.dispute_pct,
    )


# ------------------------------------------------------------------------------------------
# output
# ------------------------------------------------------------------------------------------
def report_path(session_path: str | Path, run: str) -> Path:
    """Where a run's cross-validation is stored: ``<session>.validate_<run>.json`` beside it."""
    p = Path(session_path)
    return p.with_name(f"{p.stem}.validate_{run}.json")


def _json_safe(o):
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _json_safe(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_json_safe(v) for v in o]
    return o


def save_report(report: ValidationReport, path: str | Path) -> Path:
    """Write the report as JSON (NaN as null) atomically: a failed write keeps the old file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(_json_safe(report.to_dict()), f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_report(path: str | Path) -> dict | None:
    """A stored cross-validation as a dict (None when there is none)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ValidateError(f"{path}: not a readable cross-validation report ({exc}); rerun `mvcap validate`") from exc


def _f(x: float, fmt: str = ".2f") -> str:
    return "–" if x is None or not math.isfinite(x) else format(x, fmt)


OTHERS_NOTE = (
    "other cameras' keypoints: the fitting cameras' detections, triangulated, against the held-out camera's "
    "(median): a body that follows those cameras seldom gets closer to this camera's detections"
)


def format_table(cameras: list[CameraVerdict], title: str) -> str:
    others = any(math.isfinite(c.others_keypoint_pct) for c in cameras)  # held-out tables
    head = f"{'camera':<10} {'frames':>6}  {'keypoints % height':>20}  {'silhouette IoU':>15}  {'photometric':>13}"
    head += "  " + ("verdict".ljust(9) + "   other cameras' keypoints %" if others else "verdict")
    lines = [title, head]
    for c in cameras:
        row = (
            f"{c.view:<10} {c.frames:>6}  {_f(c.init_keypoint_pct):>8} → {_f(c.result_keypoint_pct):<9}  "
            f"{_f(c.init_iou, '.3f'):>6} → {_f(c.result_iou, '.3f'):<6}  "
            f"{_f(c.init_photometric, '.1f'):>5} → {_f(c.result_photometric, '.1f'):<5}  {c.verdict:<9}"
        )
        lines.append(row + f"   {_f(c.others_keypoint_pct)}" if others else row.rstrip())
    return "\n".join(lines + ([OTHERS_NOTE] if others else []))


def disputed_sentence(view: str, disputed: int, frames: int, dispute_pct: float) -> str:
    """What a camera's disputed checks mean (the terminal report and the HTML report)."""
    return (
        f"{view}: in {disputed} of {frames} checks its detections sit more than {dispute_pct:g} % of the height off "
        "the other cameras' triangulation (another person, a mislabel): there its keypoint distance measures the "
        "detector more than the body"
    )


def format_report(report: ValidationReport) -> str:
    """The terminal table: held-out cameras (init → result), then in-view, then the verdicts."""
    out = [
        format_table(
            report.cameras,
            f"Held-out cameras ({report.predictor} refinement of run {report.run!r}, {len(report.frames)} frames; "
            "init → refined, each fitted without the camera):",
        )
    ]
    if report.in_view_cameras:
        out.append(format_table(report.in_view_cameras, "In-view (stored init → stored result, views the run used):"))
    out += [c.sentence for c in report.cameras]
    out += [disputed_sentence(c.view, c.disputed, c.frames, report.dispute_pct) for c in report.cameras if c.disputed]
    if report.worse:
        out.append(f"WARNING: the result disagrees with camera(s) {', '.join(report.worse)} more than the init did")
    out += [f"WARNING: {w}" for w in report.rig_warnings]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------
# two runs on one capture
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Interval:
    """A mean over held-out checks and its 95 % interval (bootstrap over frames)."""

    mean: float
    low: float
    high: float


@dataclass(frozen=True)
class RunComparison:
    """Two validation reports of one capture, per held-out camera (``camera`` "all": every
    camera): ``checks`` paired (camera, frame) checks; the results' differences B - A of the
    keypoint distance (% of height, < 0: B better) and IoU (> 0: B better); and each run's
    change from its initial estimate (result - init)."""

    camera: str
    checks: int
    keypoints: Interval
    iou: Interval
    keypoints_gain_a: Interval
    iou_gain_a: Interval
    keypoints_gain_b: Interval
    iou_gain_b: Interval


def _paired_checks(report: dict, undisputed: bool) -> dict[tuple[str, int], np.ndarray]:
    """(camera, frame) -> [init keypoints %, init IoU, result keypoints %, result IoU] of a
    report's held-out rows (as saved: :func:`load_report`)."""
    limit = report.get("dispute_pct")
    out = {}
    for row in report.get("holdout", []):
        if row.get("init") is None or row.get("result") is None:
            continue
        d = row.get("disagreement_pct")
        if undisputed and limit is not None and d is not None and d > limit:  # None: not measured
            continue
        i, r = row["init"], row["result"]
        vals = (i["keypoint_median_pct"], i["iou"], r["keypoint_median_pct"], r["iou"])
        out[(row["view"], int(row["frame"]))] = np.array([np.nan if v is None else v for v in vals], np.float64)
    return out


def _frame_bootstrap(diff: np.ndarray, units: np.ndarray, boot: int, rng) -> Interval:
    """Mean of ``diff`` (per check; NaN skipped) and its 95 % interval from resampling whole
    frames (``units``: each check's frame; the checks of one frame share its motion and detections)."""
    ok = np.isfinite(diff)
    diff, units = diff[ok], units[ok]
    if diff.size == 0:
        return Interval(math.nan, math.nan, math.nan)
    _, unit = np.unique(units, return_inverse=True)
    sums, counts = np.bincount(unit, diff), np.bincount(unit)
    pick = rng.integers(0, len(sums), size=(boot, len(sums)))
    lo, hi = np.percentile(sums[pick].sum(1) / counts[pick].sum(1), [2.5, 97.5])
    return Interval(float(diff.mean()), float(lo), float(hi))


def compare_reports(
    pairs: Sequence[tuple[dict, dict]], undisputed: bool = False, boot: int = 4000, seed: int = 0
) -> list[RunComparison]:
    """Is run B better than run A on this capture? ``pairs``: (A, B) saved reports
    (:func:`load_report`) of one session each (one pair per person of a take), validated on
    the same frames; their checks are paired (held-out camera, frame) and summarised per
    camera and over all of them (last row), resampling the (session, frame) units. An
    interval that holds 0 says the capture cannot tell the runs apart. ``undisputed``: leave
    out the checks whose detections are disputed (see :class:`ValidateConfig`). Raises
    ValidateError when a pair shares no check."""
    if boot < 100:
        raise ValidateError(f"boot must be at least 100 resamples for a 95 % interval, got {boot}")
    keys, A, B = [], [], []
    for p, (a, b) in enumerate(pairs):
        ca, cb = _paired_checks(a, undisputed), _paired_checks(b, undisputed)
        common = sorted(set(ca) & set(cb))
        if not common:
            raise ValidateError(
                f"reports {a.get('run')!r} and {b.get('run')!r} of {a.get('session')} share no held-out check "
                "(camera, frame): validate both runs on the same frames"
            )
        keys += [(p, *k) for k in common]
        A += [ca[k] for k in common]
        B += [cb[k] for k in common]
    if not keys:
        raise ValidateError("no reports to compare")
    A, B = np.stack(A), np.stack(B)
    cams = np.array([k[1] for k in keys])
    ids: dict[tuple[int, int], int] = {}
    units = np.array([ids.setdefault((k[0], k[2]), len(ids)) for k in keys])  # (session, frame)
    rng = np.random.default_rng(seed)
    out = []
    for cam in sorted(set(cams.tolist())) + ["all"]:
        sel = np.ones(len(keys), bool) if cam == "all" else cams == cam
        a, b = A[sel], B[sel]
        diffs = (b[:, 2] - a[:, 2], b[:, 3] - a[:, 3], a[:, 2] - a[:, 0], a[:, 3] - a[:, 1],
                 b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])  # fmt: skip
        out.append(RunComparison(cam, int(sel.sum()), *(_frame_bootstrap(x, units[sel], boot, rng) for x in diffs)))
    return out
