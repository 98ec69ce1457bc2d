"""Files shipped inside the package: the body model, the default network weights, configs,
calibration boards and the demo rig (``mvcap/assets/``, declared as package data).

They are found with :mod:`importlib.resources`, so they work the same from a checkout, an
editable install and an installed wheel. In a checkout, the top-level ``configs``,
``calibration``, ``models/body`` and ``models/displacement/lite.pt`` are symlinks into
``mvcap/assets`` so documented paths such as ``configs/bench/standard.toml`` keep working.
A user's own files always win: every caller looks here only when no path was given (or a
relative path does not exist where the user ran the command).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from mvcap.errors import MvcapError

__all__ = ["resource_path", "ResourceError"]


class ResourceError(MvcapError, FileNotFoundError):
    """A shipped resource is missing from the installed package."""


def resource_path(relative: str, must_exist: bool = True) -> Path:
    """Path of a shipped file or folder, e.g. ``resource_path("configs/refine.toml")``.

    relative: a path under ``mvcap/assets`` with ``/`` separators (``models/body/mvcap_body.npz``,
    ``configs``, ``calibration/boards``). must_exist: raise :class:`ResourceError` when absent
    (an install that dropped the package data) instead of returning the path.
    """
    root = files("mvcap").joinpath("assets")
    if not isinstance(root, Path):
        # a zip import or another loader without real files: the callers need file paths
        raise ResourceError(
            f"mvcap is imported from {root}, which is not a folder on disk; install mvcap as "
            "regular files (pip install mvcap) to use its shipped models and configs"
        )
    path = root.joinpath(*relative.split("/"))
    if must_exist and not path.exists():
        raise ResourceError(
            f"mvcap's shipped file {relative} is missing (looked in {root}); the installation is "
            "incomplete: reinstall mvcap (pip install --force-reinstall mvcap)"
        )
    return path
