"""``mvcap run CONFIG``: the whole chain, from camera files to a report, in one resumable command.

Stages (each skipped when its output already exists, so rerunning resumes):

1. **ingest** – per-camera videos / image folders + rig file → the session file
   (:mod:`mvcap.ingest`); or use an existing session file.
2. **init** – initial body per frame: 2D keypoints by MediaPipe (:mod:`mvcap.detect`),
   robust triangulation and a body fit (:mod:`mvcap.initialize`); or a user-supplied npz of
   SMPL parameters; or what the session already holds. Opt-in (``[rig_refine] enabled``),
   between detection and the fit: the rig's camera poses refined from the detected keypoints
   (:mod:`mvcap.rigrefine`), stored in the session when held-back frames agree better.
3. **subject** – a registered subject file, or registration from frames of this capture
   (:mod:`mvcap.register`); opt-in (``[adapt] enabled``): the displacement network adapted
   to the subject on this capture's photos (:mod:`mvcap.adapt`), stored with the subject.
4. **refine** – render → predict → fit per frame (:mod:`mvcap.refine`), results written
   frame by frame into the session.
5. **export** (optional) – npz / BVH / GLB / … (:mod:`mvcap.export`).
6. **report** – one self-contained HTML page (:mod:`mvcap.report`).

Relative paths in the config are relative to the config file's folder; outputs go to the
run folder (``--out``, default: the config file's folder).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mvcap.adapt import AdaptConfig
from mvcap.config import build_config, read_toml, to_dict
from mvcap.detect import DetectConfig
from mvcap.errors import MvcapError
from mvcap.frames import FrameSelectionError, select_frames
from mvcap.ingest import IngestConfig
from mvcap.initialize import InitConfig, load_npz_init
from mvcap.refine import RefineConfig
from mvcap.register import RegisterConfig
from mvcap.report import ReportConfig
from mvcap.rigrefine import RigRefineConfig

log = logging.getLogger(__name__)

__all__ = [
    "RunConfig",
    "RunSummary",
    "RunError",
    "load_run_config",
    "run_pipeline",
    "PreparedRun",
    "prepare_run",
    "note_refine",
    "finish_run",
    "format_summary",
    "refine_events",
]

INIT_SOURCES = ("auto", "keypoints", "npz", "session")


class RunError(MvcapError):
    """The run config or its inputs are not usable; the message says what to change."""


@dataclass(frozen=True)
class CaptureStage:
    session: str = "session.h5"  # the session file (in the run folder); ingest creates it from `videos`
    videos: str = ""  # folder with one video or image folder per camera ("" = use `session` as it is)
    rig: str = ""  # rig file for `videos` (anipose/Pose2Sim TOML, EasyMocap folder, .qca.txt, .xcp)
    ingest: IngestConfig = IngestConfig()


@dataclass(frozen=True)
class InitStage:
    source: str = "auto"  # auto | keypoints (MediaPipe) | npz | session (already in the file)
    npz: str = ""  # SMPL parameters per frame (source = npz, or auto without MediaPipe)
    detect: DetectConfig = DetectConfig()
    fit: InitConfig = InitConfig()


@dataclass(frozen=True)
class SubjectStage:
    file: str = ""  # a registered subject (.npz from `mvcap register`); "" = register from this capture
    name: str = "subject"
    register: RegisterConfig = RegisterConfig()


@dataclass(frozen=True)
class AdaptStage:
    enabled: bool = False  # adapt the learned predictor's network to the subject on this capture (mvcap adapt)
    config: AdaptConfig = AdaptConfig()


@dataclass(frozen=True)
class RigRefineStage:
    enabled: bool = False  # refine the rig's camera poses from the detected keypoints (mvcap rig refine --apply)
    config: RigRefineConfig = RigRefineConfig()


@dataclass(frozen=True)
class ExportStage:
    formats: tuple[str, ...] = ()  # e.g. ["npz", "bvh", "glb"]; empty = no export


@dataclass(frozen=True)
class ValidateStage:
    enabled: bool = True  # leave-one-camera-out cross-validation (needs detections and >= 3 views)
    frames: str = "::10"  # START:STOP:STEP over the refined frames: a fraction of the run's cost
    holdout: tuple[str, ...] = ()  # cameras to leave out one at a time; empty = every camera


@dataclass(frozen=True)
class ReportStage:
    enabled: bool = True
    ground_truth: str = ""  # npz of ground-truth SMPL parameters (synthetic captures): adds accuracy
    config: ReportConfig = ReportConfig()


@dataclass(frozen=True)
class RunConfig:
    name: str = "main"  # results run name inside the session
    frames: str = ""  # session frames to refine: "0:100", "::5", "10,20,30" (mvcap.frames; "" = all)
    capture: CaptureStage = CaptureStage()
    init: InitStage = InitStage()
    subject: SubjectStage = SubjectStage()
    adapt: AdaptStage = AdaptStage()
    rig_refine: RigRefineStage = RigRefineStage()
    refine: RefineConfig = RefineConfig()
    validate: ValidateStage = ValidateStage()
    export: ExportStage = ExportStage()
    report: ReportStage = ReportStage()

    def __post_init__(self):
        if self.init.source not in INIT_SOURCES:
            raise RunError(f"init.source must be one of {INIT_SOURCES}, got {self.init.source!r}")
        if not self.name or "/" in self.name:
            raise RunError(f"name must be a non-empty run name without '/', got {self.name!r}")


@dataclass
class RunSummary:
    """What a run did. failures: (frame, reason); residual_px: mean per view over done frames;
    stage_seconds: wall time per stage (0 for a stage skipped because its output existed)."""

    session: Path
    run: str
    frames_total: int
    frames_done: int
    failures: list[tuple[int, str]]
    view_names: tuple[str, ...]
    residual_px: np.ndarray
    seconds_per_frame: float
    stage_seconds: dict[str, float] = field(default_factory=dict)
    stage_notes: dict[str, str] = field(default_factory=dict)
    report: Path | None = None
    exports: dict[str, Path] = field(default_factory=dict)
    validation: dict | None = None  # the cross-validation (mvcap.validate), when it ran


def load_run_config(path: str | Path, overrides=None) -> tuple[RunConfig, Path]:
    """Read a run config; returns it and the folder its relative paths are relative to."""
    data, path = read_toml(path)
    return build_config(RunConfig, data, overrides, where=str(path)), path.parent


def _resolve(base: Path, p: str) -> Path:
    q = Path(p).expanduser()
    return q if q.is_absolute() else base / q


def _frames(spec: str, T: int) -> list[int]:
    """The run's session frames: ``frames`` in the one frame grammar (:mod:`mvcap.frames`)."""
    try:
        idx = select_frames(spec, T, what="the session")
    except FrameSelectionError as exc:
        raise RunError(f"run config: {exc}") from exc
    return list(range(T)) if idx is None else idx.tolist()


@contextlib.contextmanager
def _stage(summary: RunSummary, name: str, progress: bool):
    t0 = time.perf_counter()
    if progress:
        log.info("== %s", name)
    yield
    summary.stage_seconds[name] = round(time.perf_counter() - t0, 2)


def run_pipeline(
    cfg: RunConfig, base_dir: Path, out_dir: Path | None = None, progress: bool = True, restart: bool = False
) -> RunSummary:
    """Run every stage of ``cfg`` (see the module docstring). ``restart`` discards the
    results run (not the session, detections or subject) and refines again."""
    from mvcap.refine import refine_session

    run = prepare_run(cfg, base_dir, out_dir, progress)
    with _stage(run.summary, "refine", progress):
        failures: list = []
        events: dict = {}
        res = refine_session(
            run.session_path,
            cfg.name,
            cfg.refine,
            frames=run.frames,
            model=run.model,
            overwrite=restart,
            progress=progress,
            failures=failures,
            events=events,
        )
        note_refine(run, res, failures, events)
    return finish_run(run, res, restart, progress)


@dataclass
class PreparedRun:
    """A run config after the stages before refinement (:func:`prepare_run`): its session file,
    the session frames to refine, the body model and the summary so far."""

    cfg: RunConfig
    base_dir: Path
    out_dir: Path
    session_path: Path
    frames: list[int]
    num_frames: int
    model: object
    summary: RunSummary


def _refine_rig(session_path: Path, stage: RigRefineStage) -> str:
    """The rig refined from the session's detections and stored when held-back frames agree
    better (once: a session whose rig was replaced before keeps it); a note for the summary."""
    from mvcap.capture import Session
    from mvcap.rigrefine import apply_rig, format_result, refine_session_rig

    with Session.open(session_path) as s:
        if s.original_rig is not None:
            return "rig already refined; "
    res = refine_session_rig([session_path], None, stage.config)
    log.info(format_result(res))
    if not res.accepted:
        return f"rig kept (refined, it agreed {100 * res.gain:+.0f} % on held-back frames); "
    apply_rig([session_path], res.rig)
    return (f"rig refined from the keypoints (held-back frames {np.nanmean(res.before_px):.1f} -> "
            f"{np.nanmean(res.after_px):.1f} px); ")  # fmt: skip


def prepare_run(cfg: RunConfig, base_dir: Path, out_dir: Path | None = None, progress: bool = True,
                model=None) -> PreparedRun:  # fmt: skip
    """The stages before refinement: ingest, init, subject (each skipped when done)."""
    from mvcap.body import load_body_model
    from mvcap.capture import Session

    base_dir = Path(base_dir)
    out_dir = Path(out_dir) if out_dir is not None else base_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    session_path = _resolve(out_dir, cfg.capture.session)
    summary = RunSummary(session_path, cfg.name, 0, 0, [], (), np.zeros(0), float("nan"))
    model = model or load_body_model()

    # 1. ingest ---------------------------------------------------------------------------
    with _stage(summary, "ingest", progress):
        if session_path.exists():
            summary.stage_notes["ingest"] = f"session {session_path} exists; not ingested again"
        elif cfg.capture.videos:
            from mvcap.ingest import ingest

            if not cfg.capture.rig:
                raise RunError("capture.videos needs capture.rig (the calibration of those cameras)")
            res = ingest(
                _resolve(base_dir, cfg.capture.videos),
                _resolve(base_dir, cfg.capture.rig),
                session_path,
                cfg.capture.ingest,
                progress=progress,
            )
            summary.stage_notes["ingest"] = f"{res.num_frames} frames at {res.fps:g} fps"
        else:
            raise RunError(
                f"session {session_path} does not exist and capture.videos is empty: give the videos (and rig) "
                "to ingest, or point capture.session at an existing session file"
            )
    with Session.open(session_path) as s:
        T = s.num_frames
        summary.view_names = s.view_names
        has_init = s.init_valid
        stored_subject = s.subject
    frames = _frames(cfg.frames, T)
    summary.frames_total = len(frames)

    # 2. init -----------------------------------------------------------------------------
    with _stage(summary, "init", progress):
        source = cfg.init.source
        if source == "auto":
            from mvcap.detect import mediapipe_available

            if has_init[frames].all():
                source = "session"
            elif mediapipe_available():
                source = "keypoints"
            elif cfg.init.npz:
                source = "npz"
            else:
                raise RunError(
                    "no initial estimates: install MediaPipe for keypoint initialisation "
                    "(pip install 'mvcap[detect]') or give init.npz (SMPL parameters per frame)"
                )
        if source == "session":
            missing = [t for t in frames if not has_init[t]]
            if missing:
                raise RunError(
                    f"init.source = 'session' but frames {missing[:10]} of {session_path} have no initial "
                    "estimate; use init.source = 'keypoints' or 'npz'"
                )
            summary.stage_notes["init"] = "initial estimates from the session"
        elif source == "npz":
            if not cfg.init.npz:
                raise RunError("init.source = 'npz' needs init.npz (a file of SMPL parameters per frame)")
            if has_init[frames].all():
                summary.stage_notes["init"] = "initial estimates already stored"
            else:
                params = load_npz_init(_resolve(base_dir, cfg.init.npz), num_frames=T)
                with Session.open(session_path, "a") as s:
                    s.write_init(params)
                summary.stage_notes["init"] = f"initial estimates from {cfg.init.npz}"
        else:
            from mvcap.detect import detect_session
            from mvcap.initialize import initialize_session

            det = detect_session(session_path, cfg.init.detect, frames=frames, progress=progress)
            rig_note = _refine_rig(session_path, cfg.rig_refine) if cfg.rig_refine.enabled else ""
            ini = initialize_session(session_path, cfg.init.fit, frames=frames, progress=progress, model=model)
            summary.stage_notes["init"] = (
                f"MediaPipe found the person in {100 * det.found_fraction:.0f} % of new view images; {rig_note}{ini}"
            )

    # 3. subject --------------------------------------------------------------------------
    with _stage(summary, "subject", progress):
        from mvcap.subject import Subject

        if cfg.subject.file:
            subject = Subject.load(_resolve(base_dir, cfg.subject.file))
            # kept: the same subject, or the session's copy of it that the adapt stage adapted
            same = stored_subject is not None and (
                stored_subject == subject
                or (subject.displacement_net is None and _unadapted(stored_subject) == subject)
            )
            if not same:
                with Session.open(session_path, "a") as s:
                    s.write_subject(subject)
            summary.stage_notes["subject"] = f"subject {subject.name} from {cfg.subject.file}"
        elif stored_subject is not None and stored_subject.name == cfg.subject.name:
            summary.stage_notes["subject"] = f"subject {stored_subject.name} already registered in the session"
        else:
            from mvcap.detect import detect_session, mediapipe_available
            from mvcap.register import register_subject

            with Session.open(session_path) as s:
                detected = s.has_detections
            if not detected:
                if not mediapipe_available():
                    raise RunError(
                        "registering the subject needs person masks or 2D keypoints, and MediaPipe is not installed: "
                        "install it (pip install 'mvcap[detect]') or give a registered subject file (subject.file)"
                    )
                detect_session(session_path, cfg.init.detect, progress=progress)
            subject_path = out_dir / f"{cfg.subject.name}.npz"
            reg = register_subject(
                session_path,
                cfg.subject.name,
                cfg.subject.register,
                out=subject_path,
                write_session=True,
                model=model,
                progress=progress,
            )
            iou = reg.shape.silhouette_iou
            iou_txt = f", silhouette IoU {np.nanmean(iou):.2f}" if np.isfinite(iou).any() else ""
            summary.stage_notes["subject"] = (
                f"registered {cfg.subject.name} from {len(reg.frames)} frames x {len(reg.views)} views{iou_txt} "
                f"-> {subject_path}"
            )

    # 3b. adapt (opt-in) -------------------------------------------------------------------
    if cfg.adapt.enabled:
        with _stage(summary, "adapt", progress):
            summary.stage_notes["adapt"] = _adapt_stage(cfg, session_path, frames, progress)

    return PreparedRun(cfg, base_dir, out_dir, session_path, frames, T, model, summary)


def _unadapted(subject):
    """The subject without an adapted network (what registration made)."""
    import dataclasses

    meta = {k: v for k, v in subject.meta.items() if k != "adapted"}
    return dataclasses.replace(subject, displacement_net=None, meta=meta)


def _adapt_stage(cfg: RunConfig, session_path: Path, frames: list[int], progress: bool) -> str:
    """Adapt the network to the session's subject on ``frames`` unless it already is (same
    session, frames and settings); the adapted subject is stored in the session."""
    from mvcap.adapt import adapt_subject
    from mvcap.capture import Session

    with Session.open(session_path) as s:
        subject = s.subject
    done = subject.meta.get("adapted", {}) if subject.displacement_net is not None else {}
    wanted = {
        "session": str(session_path.resolve()),
        "config": json.loads(json.dumps(to_dict(cfg.adapt.config))),
        "frames": [int(t) for t in frames],
    }
    if done and all(done.get(k) == v for k, v in wanted.items()):
        return f"network already adapted to {subject.name} on this capture"
    adapted, res = adapt_subject(_unadapted(subject), session_path, cfg.adapt.config, frames=frames, progress=progress,
                                 label_refine=cfg.refine)  # fmt: skip
    with Session.open(session_path, "a") as s:
        s.write_subject(adapted)
    return res.describe()


def note_refine(run: PreparedRun, res, failures: list, events: dict) -> None:
    """Put what refinement did (results ``res``, failures, events) into the run's summary."""
    summary, frames = run.summary, run.frames
    summary.failures = [(int(t), str(r)) for t, r in failures]
    notes = refine_events(events)
    if notes:
        summary.stage_notes["refine"] = notes
    done = res.done[frames]
    summary.frames_done = int(done.sum())
    idx = np.asarray(frames)[done]
    if idx.size:
        with np.errstate(all="ignore"):
            summary.residual_px = np.nanmean(res.residual_px[idx], axis=0)
        summary.seconds_per_frame = float(np.mean(res.seconds[idx]))


def finish_run(run: PreparedRun, res, restart: bool = False, progress: bool = True) -> RunSummary:
    """The stages after refinement (validate, export, report) and the summary JSON."""
    cfg, base_dir, out_dir, session_path = run.cfg, run.base_dir, run.out_dir, run.session_path
    frames, T, model, summary = run.frames, run.num_frames, run.model, run.summary

    # 5. validate -------------------------------------------------------------------------
    if cfg.validate.enabled and summary.frames_done:
        with _stage(summary, "validate", progress):
            _validate_stage(cfg, session_path, summary, model, restart, progress)

    # 6. export ---------------------------------------------------------------------------
    if cfg.export.formats and summary.frames_done:
        with _stage(summary, "export", progress):
            from mvcap.export import export_session

            done_idx = np.asarray(frames)[res.done[frames]]
            exp = export_session(
                session_path,
                cfg.name,
                out_dir / "export",
                formats=list(cfg.export.formats),
                frames=done_idx,
                model=model,
            )
            summary.exports = dict(exp.paths)

    # 7. report ---------------------------------------------------------------------------
    if cfg.report.enabled and summary.frames_done:
        with _stage(summary, "report", progress):
            from mvcap.report import build_report

            gt = None
            if cfg.report.ground_truth:
                gt = load_npz_init(_resolve(base_dir, cfg.report.ground_truth), num_frames=T)
            facts = {
                "failures": [f"frame {t}: {r}" for t, r in summary.failures],
                "stages (s)": summary.stage_seconds,
                "notes": summary.stage_notes,
                "config": to_dict(cfg),
            }
            summary.report = build_report(
                session_path,
                cfg.name,
                out_dir / f"report_{cfg.name}.html",
                cfg.report.config,
                facts,
                gt,
                model,
                validation=summary.validation,
            )
    (out_dir / f"summary_{cfg.name}.json").write_text(json.dumps(_summary_dict(summary), indent=2, default=str))
    return summary


def refine_events(events: dict) -> str:
    """What refinement's safeguards did, in one line for the summary."""
    out = []
    for cam, frames in sorted(events.get("dead_views", {}).items()):
        out.append(f"camera {cam} showed no picture (dead or black) in {len(frames)} frame(s) and was ignored")
    for cam, frames in sorted(events.get("down_weighted", {}).items()):
        out.append(f"camera {cam} disagreed with the others in {len(frames)} frame(s) and was down-weighted")
    if events.get("kept"):
        out.append(
            f"{len(events['kept'])} frame(s) kept their initial estimate: no refinement round agreed better with "
            "the cameras' keypoints and masks"
        )
    if events.get("rounds"):
        r = events["rounds"]
        out.append(f"{sum(r) / len(r):.1f} render-predict-fit rounds per frame ({min(r)}-{max(r)})")
    if events.get("previous_rejected"):
        out.append(
            f"{len(events['previous_rejected'])} frame(s) started from their own estimate, not the drifted "
            "previous result"
        )
    return "; ".join(out)


def _validate_stage(cfg: RunConfig, session_path: Path, summary: RunSummary, model, restart: bool, progress: bool):
    """Cross-validate the run (skipped, with a note saying why, when it cannot be done)."""
    from mvcap.capture import Session
    from mvcap.validate import ValidateConfig, load_report, report_path, save_report, validate_run

    path = report_path(session_path, cfg.name)
    with Session.open(session_path) as s:
        detected = s.has_detections
        views = len(cfg.refine.views or s.view_names)
    if not detected:
        summary.stage_notes["validate"] = "skipped: no 2D detections to check against (run `mvcap detect`)"
        return
    if views < 3:
        summary.stage_notes["validate"] = f"skipped: {views} camera(s); leaving one out needs at least 3"
        return
    if path.exists() and not restart:
        summary.validation = load_report(path)
        summary.stage_notes["validate"] = f"cross-validation {path.name} exists; not redone"
        return
    vcfg = ValidateConfig(frames=cfg.validate.frames, init=cfg.init.fit)
    rep = validate_run(session_path, cfg.name, vcfg, holdout=list(cfg.validate.holdout) or None, model=model,
                       progress=progress)  # fmt: skip
    save_report(rep, path)
    summary.validation = load_report(path)
    summary.stage_notes["validate"] = f"{len(rep.frames)} frames x {len(rep.cameras)} held-out cameras -> {path.name}"


def _summary_dict(s: RunSummary) -> dict:
    return {
        "session": str(s.session),
        "run": s.run,
        "frames_total": s.frames_total,
        "frames_done": s.frames_done,
        "failures": s.failures,
        "residual_px": dict(zip(s.view_names, [round(float(x), 3) for x in s.residual_px])),
        "seconds_per_frame": s.seconds_per_frame,
        "stage_seconds": s.stage_seconds,
        "stage_notes": s.stage_notes,
        "report": str(s.report) if s.report else None,
        "exports": {k: str(v) for k, v in s.exports.items()},
        "validation": None
        if s.validation is None
        else {
            "verdict": s.validation.get("verdict"),
            "worse": s.validation.get("worse"),
            "cameras": s.validation.get("cameras"),
        },  # fmt: skip
    }


def format_summary(s: RunSummary) -> str:
    """The end-of-run summary printed by ``mvcap run``."""
    lines = [f"run '{s.run}' of {s.session}: {s.frames_done} / {s.frames_total} frames refined"]
    if s.failures:
        lines.append(f"  failures ({len(s.failures)}):")
        lines += [f"    frame {t}: {r}" for t, r in s.failures[:20]]
        if len(s.failures) > 20:
            lines.append(f"    ... and {len(s.failures) - 20} more (see the summary JSON)")
    if s.residual_px.size:
        per_view = ", ".join(f"{n} {r:.2f}" for n, r in zip(s.view_names, s.residual_px))
        lines.append(f"  mean residual per view (px): {per_view}")
        lines.append(f"  time per frame: {s.seconds_per_frame:.2f} s")
    lines.append("  stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in s.stage_seconds.items()))
    for k, v in s.stage_notes.items():
        lines.append(f"  {k}: {v}")
    if s.validation is not None:
        words = {"improved": "improved", "unchanged": "no change", "worse": "WORSE", "no data": "no data"}
        per_cam = ", ".join(
            f"{c['view']} {words.get(c['verdict'], c['verdict'])}" for c in s.validation.get("cameras", [])
        )
        lines.append(f"  cross-validation (held-out cameras): {per_cam}")
        if s.validation.get("worse"):
            lines.append(
                f"  WARNING: the refined result disagrees with camera(s) {', '.join(s.validation['worse'])} more "
                "than the initial estimate did; see the report's cross-validation section"
            )
    for fmt, p in s.exports.items():
        lines.append(f"  export {fmt}: {p}")
    if s.report:
        lines.append(f"  report: {s.report}")
    return "\n".join(lines)
