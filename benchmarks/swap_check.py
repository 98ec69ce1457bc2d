"""Left/right swaps in a session's detections, as the triangulation sees them.

    python benchmarks/swap_check.py SESSION.h5 [SESSION.h5 ...] [--frames 0:50]

For every session, with all cameras and with each camera left out (what ``mvcap validate``
triangulates): the frames whose triangulation is a mirror image when only the per-view swap
test runs (``fix_mirror = false``: most views swapped, see :mod:`mvcap.triangulate`), and how
many view-frames the full triangulation exchanges left and right in. For each left-out camera
also the frames whose detections :func:`mvcap.triangulate.match_swaps` reads exchanged
against the other cameras.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")


def main(argv=None) -> int:
    from mvcap.capture import Session
    from mvcap.frames import parse_frames
    from mvcap.keypoints import keypoint_set
    from mvcap.triangulate import TriangulateConfig, match_swaps, mirrored_frames, triangulate_keypoints

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sessions", nargs="+", type=Path)
    ap.add_argument("--frames", default="::1")
    args = ap.parse_args(argv)
    for path in args.sessions:
        with Session.open(path) as s:
            frames = parse_frames(args.frames).resolve(s.num_frames, check=False)
            kp, rig, kset = s.read_keypoints(frames), s.rig, keypoint_set(s.keypoint_format)
        print(f"{path.name}: {len(frames)} frames, {len(rig)} cameras")
        for held in [None, *range(len(rig))]:
            use = [v for v in range(len(rig)) if v != held]
            sub = rig.subset([rig.names[v] for v in use])
            only_swaps = triangulate_keypoints(sub, kp[:, use], TriangulateConfig(fix_mirror=False), kset.flip_index)
            mirrored = mirrored_frames(only_swaps.points_world, kset.names)
            tri = triangulate_keypoints(sub, kp[:, use], TriangulateConfig(), kset.flip_index, kset.names)
            label = "all cameras" if held is None else f"without {rig.names[held]}"
            line = (f"  {label:<16} mirrored frames {[int(frames[t]) for t in np.flatnonzero(mirrored)]}; "
                    f"views exchanged {int(tri.swapped.sum())}")  # fmt: skip
            if held is not None:
                read = match_swaps(rig.subset([rig.names[held]]), kp[:, held], tri.points_world, TriangulateConfig(),
                                   kset.flip_index)[0]  # fmt: skip
                line += f"; {rig.names[held]} read exchanged in frames {[int(frames[t]) for t in np.flatnonzero(read)]}"
            print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
