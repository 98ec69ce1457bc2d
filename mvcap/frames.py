"""The one frame-selection grammar of mvcap (``--frames`` of every command, ``frames`` in configs).

A selection is a comma-separated list of items; each item is a frame number ``N`` or a range
``START:STOP`` / ``START:STOP:STEP`` with ``STOP`` exclusive, as in Python slices:

==================  ==========================================================
``0:100``           frames 0 .. 99
``:100``            frames 0 .. 99 (START defaults to 0)
``50:``             frame 50 to the last frame (STOP defaults to the count)
``0:100:2``         every other frame of 0 .. 99
``::10``            every 10th frame of the whole session
``10,20,30``        exactly these frames
``0:10,20,30:40:2`` mixed: 0..9, 20, 30, 32, .., 38
==================  ==========================================================

Numbers are non-negative; the resolved frames are sorted and unique. :func:`parse_frames`
checks the text alone; :meth:`FrameSelection.resolve` turns it into frame indices against a
frame count (a session's frames, a source's length) and says which frames fall outside it.
:func:`select_frames` does both, and also takes what library callers pass (a slice, a range,
a sequence of ints).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mvcap.errors import MvcapError

__all__ = ["FrameSelectionError", "FrameSelection", "parse_frames", "select_frames", "format_frames"]

_EXAMPLES = "e.g. 0:100, 0:100:2, ::10, 10,20,30 or 0:10,20,30:40:2"


class FrameSelectionError(MvcapError):
    """A frame selection is malformed or reaches outside the frames there are."""


@dataclass(frozen=True)
class FrameSelection:
    """A parsed frame selection. items: per comma-separated item either ``(n,)`` (one frame) or
    ``(start, stop, step)`` with ``stop=None`` meaning "to the end"; text: what was parsed."""

    items: tuple[tuple[int, ...], ...]
    text: str

    @property
    def open_ended(self) -> bool:
        """Whether a range runs to the end (its frames depend on the frame count)."""
        return any(len(it) == 3 and it[1] is None for it in self.items)

    @property
    def only_frames(self) -> bool:
        """Whether the selection lists single frames only (``10,20,30``), no range."""
        return all(len(it) == 1 for it in self.items)

    @property
    def step(self) -> int:
        """The step of a selection that is one range (1 for anything else)."""
        return self.items[0][2] if len(self.items) == 1 and len(self.items[0]) == 3 else 1

    def resolve(self, num_frames: int | None, what: str = "the session", check: bool = True) -> np.ndarray:
        """(T',) sorted unique int64 frame indices. ``num_frames``: how many frames there are
        (frames ``0 .. num_frames-1``); None when unknown (then every range needs a STOP and
        nothing is range-checked). FrameSelectionError names frames outside ``what``;
        ``check=False``: ``num_frames`` only ends open ranges (the caller checks the rest)."""
        if num_frames is not None and num_frames < 1:
            raise FrameSelectionError(f"frames {self.text!r}: {what} has no frames")
        parts = []
        for it in self.items:
            if len(it) == 1:
                parts.append(np.array(it, np.int64))
                continue
            start, stop, step = it
            if stop is None:
                if num_frames is None:
                    raise FrameSelectionError(
                        f"frames {self.text!r}: the range {start}: needs a STOP here (the frame count is not known)"
                    )
                stop = num_frames
            parts.append(np.arange(start, stop, step, dtype=np.int64))
        idx = np.unique(np.concatenate(parts))
        if check and num_frames is not None and idx.size and idx[-1] >= num_frames:
            bad = idx[idx >= num_frames]
            raise FrameSelectionError(
                f"frames {self.text!r} asks for frame(s) {format_frames(bad)} but {what} has {num_frames} frames "
                f"(0..{num_frames - 1}); choose frames below {num_frames}"
            )
        if idx.size == 0:
            where = f" of {what}'s {num_frames} frames" if num_frames is not None else ""
            raise FrameSelectionError(f"frames {self.text!r} selects no frame{where}")
        return idx


def _int(tok: str, text: str, name: str) -> int:
    tok = tok.strip()
    if not tok.isdigit():  # no sign, no spaces inside, no float
        raise FrameSelectionError(
            f"frames {text!r}: {name} {tok!r} is not a frame number >= 0; write frames as {_EXAMPLES}"
        )
    return int(tok)


def parse_frames(text: str | None) -> FrameSelection | None:
    """Parse a frame selection (see the module docstring); None or blank text -> None (all)."""
    if text is None or not str(text).strip():
        return None
    text = str(text).strip()
    items = []
    for raw in text.split(","):
        tok = raw.strip()
        if not tok:
            raise FrameSelectionError(f"frames {text!r}: an empty item between commas; write frames as {_EXAMPLES}")
        fields = tok.split(":")
        if len(fields) == 1:
            items.append((_int(tok, text, "frame"),))
            continue
        if len(fields) > 3:
            raise FrameSelectionError(f"frames {text!r}: {tok!r} has more than two ':'; write START:STOP:STEP")
        start = _int(fields[0], text, "START") if fields[0].strip() else 0
        stop = _int(fields[1], text, "STOP") if fields[1].strip() else None
        step = _int(fields[2], text, "STEP") if len(fields) == 3 and fields[2].strip() else 1
        if step < 1:
            raise FrameSelectionError(f"frames {text!r}: STEP must be >= 1, got {step}")
        if stop is not None and stop <= start:
            raise FrameSelectionError(
                f"frames {text!r}: the range {tok!r} is empty (STOP is exclusive and must exceed START)"
            )
        items.append((start, stop, step))
    return FrameSelection(tuple(items), text)


def select_frames(frames, num_frames: int | None, what: str = "the session") -> np.ndarray | None:
    """Any frame request -> sorted unique int64 indices checked against ``num_frames``.

    frames: None (-> None: the caller's default, usually every frame), a selection string, a
    :class:`FrameSelection`, a slice, a range or a sequence of ints.
    """
    if frames is None:
        return None
    if isinstance(frames, str):
        frames = parse_frames(frames)
        if frames is None:
            return None
    if isinstance(frames, FrameSelection):
        return frames.resolve(num_frames, what)
    if isinstance(frames, slice):
        start, stop, step = frames.start or 0, frames.stop, frames.step or 1
        if min(start, step - 1, 0 if stop is None else stop) < 0:
            raise FrameSelectionError(f"frame range {frames} must use START, STOP >= 0 and STEP >= 1")
        text = f"{start}:{'' if stop is None else stop}" + (f":{step}" if step != 1 else "")
        return FrameSelection(((start, stop, step),), text).resolve(num_frames, what)
    arr = np.asarray(list(frames) if isinstance(frames, (range, Sequence)) else frames)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise FrameSelectionError(f"frame indices must be integers, got {arr.dtype}")
    arr = arr.astype(np.int64).reshape(-1)
    if arr.size and arr.min() < 0:
        raise FrameSelectionError(f"frame indices must be >= 0, got {format_frames(arr[arr < 0])}")
    if arr.size == 0:
        raise FrameSelectionError(f"no frames requested from {what}")
    return FrameSelection(tuple((int(t),) for t in arr), format_frames(arr)).resolve(num_frames, what)


def format_frames(frames) -> str:
    """Frame indices as compact text: ``[0, 1, 2, 5, 7, 8]`` -> ``'0:3,5,7:9'`` (parseable back)."""
    idx = np.unique(np.asarray(frames, np.int64).reshape(-1))
    if idx.size == 0:
        return ""
    parts, start = [], int(idx[0])
    for a, b in zip(idx[:-1], idx[1:], strict=True):
        if b != a + 1:
            parts.append(f"{start}:{int(a) + 1}" if a != start else f"{start}")
            start = int(b)
    parts.append(f"{start}:{int(idx[-1]) + 1}" if idx[-1] != start else f"{start}")
    return ",".join(parts)
