"""A registered person: body shape plus appearance, captured once and reused per session.

A :class:`Subject` holds

* ``betas``: (10,) float32 SMPL shape coefficients (the pre-fitted, fixed shape);
* ``texture``: (Ht, Wt, 3) uint8 RGB UV texture or ``None``. Row 0 of the array is the
  *top* of UV space (v = 1), i.e. the usual image layout; a UV coordinate (u, v) maps to
  pixel column ``u * (Wt - 1)`` and row ``(1 - v) * (Ht - 1)``;
* ``vertex_colors``: (N, 3) uint8 RGB per body-model vertex or ``None``;
* ``gender``: ``"neutral"``, ``"male"`` or ``"female"`` (which body model the betas are for);
* ``meta``: free JSON-serialisable dict (scan date, source, notes);
* ``displacement_net``: the displacement network adapted to this person (``mvcap adapt``),
  the bytes of a weights file, or ``None``; the learned predictor uses it when present.

Files are ``.npz`` archives (no pickles): ``Subject.save(path)`` / ``Subject.load(path)``.
Array fields are stored read-only so a frozen ``Subject`` really is immutable.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mvcap.errors import MvcapError

__all__ = [
    "Subject",
    "SubjectError",
    "NUM_BETAS",
    "GENDERS",
    "SUBJECT_FORMAT",
    "SUBJECT_FORMAT_VERSION",
]

NUM_BETAS = 10
GENDERS = ("neutral", "male", "female")
SUBJECT_FORMAT = "mvcap-subject"
SUBJECT_FORMAT_VERSION = 1


class SubjectError(MvcapError):
    """A subject is invalid or a subject file cannot be read; the message says what and how
    to fix it."""


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.array(a, copy=True)
    a.setflags(write=False)
    return a


@dataclass(frozen=True, eq=False)
class Subject:
    """A registered person. See the module docstring for field shapes and conventions."""

    name: str
    betas: np.ndarray
    texture: np.ndarray | None = None
    vertex_colors: np.ndarray | None = None
    gender: str = "neutral"
    meta: dict = field(default_factory=dict)
    displacement_net: bytes | None = None

    def __post_init__(self):
        who = f"subject '{self.name}'"
        if not isinstance(self.name, str) or not self.name:
            raise SubjectError(f"subject name must be a non-empty string, got {self.name!r}")
        try:
            betas = np.asarray(self.betas, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise SubjectError(f"{who}: betas must be numeric ({exc})") from exc
        if betas.shape != (NUM_BETAS,):
            raise SubjectError(
                f"{who}: betas must have shape ({NUM_BETAS},), got {betas.shape}; "
                f"pass one shape vector (e.g. betas[0] if you have a (1, {NUM_BETAS}) batch)"
            )
        if not np.all(np.isfinite(betas)):
            raise SubjectError(f"{who}: betas contain NaN or infinite values")
        object.__setattr__(self, "betas", _readonly(betas))

        if self.texture is not None:
            tex = np.asarray(self.texture)
            if tex.ndim != 3 or tex.shape[2] != 3 or tex.shape[0] < 1 or tex.shape[1] < 1:
                raise SubjectError(
                    f"{who}: texture must be an (Ht, Wt, 3) RGB image, got shape {tex.shape}"
                )
            if tex.dtype != np.uint8:
                raise SubjectError(
                    f"{who}: texture must be uint8, got {tex.dtype}; convert a [0, 1] float image "
                    "with (np.clip(tex, 0, 1) * 255).round().astype(np.uint8)"
                )
            object.__setattr__(self, "texture", _readonly(tex))

        if self.vertex_colors is not None:
            vc = np.asarray(self.vertex_colors)
            if vc.ndim != 2 or vc.shape[1] != 3 or vc.shape[0] < 1:
                raise SubjectError(f"{who}: vertex_colors must have shape (N, 3), got {vc.shape}")
            if vc.dtype != np.uint8:
                raise SubjectError(
                    f"{who}: vertex_colors must be uint8, got {vc.dtype}; convert [0, 1] floats "
                    "with (np.clip(c, 0, 1) * 255).round().astype(np.uint8)"
                )
            object.__setattr__(self, "vertex_colors", _readonly(vc))

        if self.gender not in GENDERS:
            raise SubjectError(f"{who}: gender must be one of {GENDERS}, got {self.gender!r}")
        meta = dict(self.meta or {})
        try:
            json.dumps(meta)
        except (TypeError, ValueError) as exc:
            raise SubjectError(f"{who}: meta must be JSON-serialisable ({exc})") from exc
        object.__setattr__(self, "meta", meta)
        if self.displacement_net is not None:
            net = self.displacement_net
            if isinstance(net, np.ndarray) and net.dtype == np.uint8:
                net = net.tobytes()
            if not isinstance(net, (bytes, bytearray)) or not net:
                raise SubjectError(
                    f"{who}: displacement_net must be the bytes of a weights file (mvcap adapt), "
                    f"got {type(self.displacement_net).__name__}"
                )
            object.__setattr__(self, "displacement_net", bytes(net))

    # ----------------------------------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Subject):
            return NotImplemented

        def same(a, b):
            if a is None or b is None:
                return a is None and b is None
            return a.shape == b.shape and a.dtype == b.dtype and bool(np.array_equal(a, b))

        return (
            self.name == other.name
            and self.gender == other.gender
            and self.meta == other.meta
            and same(self.betas, other.betas)
            and same(self.texture, other.texture)
            and same(self.vertex_colors, other.vertex_colors)
            and self.displacement_net == other.displacement_net
        )

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        tex = None if self.texture is None else self.texture.shape
        vc = None if self.vertex_colors is None else self.vertex_colors.shape
        return (
            f"Subject(name={self.name!r}, gender={self.gender!r}, texture={tex}, "
            f"vertex_colors={vc}, adapted_net={self.displacement_net is not None})"
        )

    # ----------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write a compressed ``.npz`` at exactly ``path`` (no suffix is added); returns it."""
        path = Path(path)
        arrays: dict[str, Any] = {
            "format": np.array(SUBJECT_FORMAT),
            "format_version": np.array(SUBJECT_FORMAT_VERSION, dtype=np.int64),
            "name": np.array(self.name),
            "gender": np.array(self.gender),
            "meta_json": np.array(json.dumps(self.meta, sort_keys=True)),
            "betas": np.asarray(self.betas),
        }
        if self.texture is not None:
            arrays["texture"] = np.asarray(self.texture)
        if self.vertex_colors is not None:
            arrays["vertex_colors"] = np.asarray(self.vertex_colors)
        if self.displacement_net is not None:
            arrays["displacement_net"] = np.frombuffer(self.displacement_net, np.uint8)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".partial")
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
        os.replace(tmp, path)  # atomic: a crash never leaves a half-written subject file
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Subject:
        """Read a file written by :meth:`save`. Raises :class:`SubjectError` naming the problem."""
        path = Path(path)
        if not path.exists():
            raise SubjectError(f"subject file {path} does not exist")
        if path.is_dir():
            raise SubjectError(f"subject path {path} is a directory, expected a .npz file")
        try:
            z = np.load(path, allow_pickle=False)
            if not isinstance(z, np.lib.npyio.NpzFile):  # a plain .npy array
                raise SubjectError(
                    f"subject file {path} is a single .npy array, expected a .npz archive"
                )
            with z:
                data = {k: z[k] for k in z.files}
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError) as exc:
            if isinstance(exc, SubjectError):
                raise
            raise SubjectError(
                f"subject file {path} is not a readable .npz archive (truncated or corrupt? {exc})"
            ) from exc
        fmt = str(data["format"]) if "format" in data else None
        if fmt != SUBJECT_FORMAT:
            raise SubjectError(f"{path} is not an mvcap subject file (format marker is {fmt!r})")
        version = int(data.get("format_version", -1))
        if version > SUBJECT_FORMAT_VERSION:
            raise SubjectError(
                f"{path} has subject format version {version}, this mvcap reads up to "
                f"{SUBJECT_FORMAT_VERSION}; upgrade mvcap"
            )
        missing = [k for k in ("name", "gender", "betas", "meta_json") if k not in data]
        if missing:
            raise SubjectError(f"subject file {path} is malformed: missing entries {missing}")
        try:
            meta = json.loads(str(data["meta_json"]))
        except ValueError as exc:
            raise SubjectError(
                f"subject file {path} is malformed: meta_json is not JSON ({exc})"
            ) from exc
        try:
            return cls(
                name=str(data["name"]),
                betas=data["betas"],
                texture=data.get("texture"),
                vertex_colors=data.get("vertex_colors"),
                gender=str(data["gender"]),
                meta=meta,
                displacement_net=data.get("displacement_net"),
            )
        except SubjectError as exc:
            raise SubjectError(f"subject file {path} is malformed: {exc}") from exc
