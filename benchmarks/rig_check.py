"""Does the rig fit the take? Each camera against the keypoints triangulated from the others.

    python benchmarks/rig_check.py SESSION.h5 [SESSION.h5 ...] [--frames 0:25] [--rig FILE ...] [--shifts 6]
        [--reference FILE]

For every camera and session: the median distance (px) between its confident detections and
the other cameras' triangulation projected into it, and the median signed offset (x, y),
projected minus detected. A calibration error shows as an offset of one sign for every
landmark and every person in that camera (a detector's landmark bias differs per landmark).
``--rig`` adds the same table for other rigs (rig files, e.g. ``mvcap rig refine --out``, or
sessions' rigs); ``--reference`` also prints each rig's per-camera difference to a reference
rig (e.g. the true rig of a synthetic session), :func:`mvcap.calibrate.compare_rigs`;
``--warnings`` prints what ``mvcap init`` and ``mvcap validate`` warn about each rig;
``--zero-distortion`` repeats each check with the lenses' distortion off (is it the lenses?);
``--shifts N`` also scans time offsets of -N..N frames between each camera and the others
(the median distance per offset), which a synchronisation error would show as a minimum away
from 0.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path

import numpy as np

os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")


def _rig(path: Path):
    """The rig of a session file (.h5) or a rig file."""
    from mvcap.capture import Session
    from mvcap.rigio import load_rig

    if path.suffix == ".h5":
        with Session.open(path) as s:
            return s.rig
    return load_rig(path)


def main(argv=None) -> int:
    from mvcap.calibrate import compare_rigs, format_comparison
    from mvcap.cameras import Rig
    from mvcap.capture import Session
    from mvcap.frames import parse_frames
    from mvcap.keypoints import keypoint_set
    from mvcap.rigrefine import leave_one_out_offsets, offset_warnings, projected_from_others

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sessions", nargs="+", type=Path)
    ap.add_argument("--frames", default=None, help="frames to check (mvcap's frame grammar; default all)")
    ap.add_argument("--rig", action="append", default=[], type=Path, help="another rig (file or session) to check")
    ap.add_argument("--reference", type=Path, default=None, help="a rig (file or session) to compare each rig with")
    ap.add_argument("--shifts", type=int, default=0, help="also scan time offsets of -N..N frames")
    ap.add_argument("--warnings", action="store_true", help="also print what mvcap init / validate would warn")
    ap.add_argument("--zero-distortion", action="store_true", help="also check each rig with its lens distortion off")
    ap.add_argument("--min-confidence", type=float, default=0.5)
    args = ap.parse_args(argv)

    for path in args.sessions:
        with Session.open(path) as s:
            idx = None if args.frames is None else parse_frames(args.frames).resolve(s.num_frames)
            kp, rig = s.read_keypoints(idx).astype(np.float64), s.rig
            flip = keypoint_set(s.keypoint_format).flip_index
        rigs = [("session rig", rig)] + [(str(r), _rig(r)) for r in args.rig]
        if args.zero_distortion:
            rigs += [(f"{name}, no distortion", Rig(tuple(replace(c, dist=0 * c.dist) for c in r))) for name, r in rigs]
        for label, r in rigs:
            print(f"{path.name}, {label}:")
            offsets = leave_one_out_offsets(r, kp, args.min_confidence, flip)
            for h, (name, (dist, dx, dy, _)) in enumerate(zip(r.names, offsets)):
                line = f"  {name:>8s}: median {dist:6.1f} px, offset ({dx:+6.1f}, {dy:+6.1f}) px"
                if args.shifts > 0:
                    uv, T, scan = projected_from_others(r, kp, h, flip), len(kp), []
                    for k in range(-args.shifts, args.shifts + 1):
                        a, b = max(0, -k), min(T, T - k)
                        dk, uk = kp[a + k : b + k, h], uv[a:b]
                        okk = (dk[..., 2] >= args.min_confidence) & np.isfinite(uk).all(-1)
                        scan.append(f"{k:+d}:{np.median(np.linalg.norm(uk - dk[..., :2], axis=-1)[okk]):.0f}")
                    line += "; time offset -> median px " + " ".join(scan)
                print(line)
            for w in offset_warnings(r, offsets) if args.warnings else []:
                print(f"  warning: {w}")
            if args.reference is not None:
                print(format_comparison(compare_rigs(r, _rig(args.reference))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
