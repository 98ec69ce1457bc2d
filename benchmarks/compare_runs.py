"""Is one refinement better than another on a real capture? A paired comparison of two
`mvcap validate` reports of the same session, with bootstrap intervals over frames.

    python benchmarks/compare_runs.py A.validate.json B.validate.json [--undisputed] [--boot 4000]

Both reports must hold the same held-out checks (camera, frame): run `mvcap validate` on the
same frames for both runs. For each check the held-out keypoint distance (% of the person's
height) and silhouette IoU of A's and B's results are paired; the rows give, per held-out
camera and over all cameras, the mean of B - A and its 95 % interval from resampling the
frames (the checks of one frame share its motion and detections, so frames are the unit).
An interval that holds 0 says the capture cannot tell the two apart. The same for each
report's change from its initial estimate (result - init), which is what validate's verdicts
read. ``--undisputed`` leaves out the checks where the held-out camera's detections sit more
than the report's ``dispute_pct`` off the fitting cameras' triangulation (another person, a
mislabel): there the keypoint distance measures the detector. (:func:`mvcap.validate.compare_reports`)
"""

from __future__ import annotations

import argparse
import math
import sys


def _ci(t, spec: str) -> str:
    return "–" if not math.isfinite(t.mean) else f"{t.mean:{spec}} [{t.low:{spec}}, {t.high:{spec}}]"


def main(argv=None) -> int:
    from mvcap.validate import ValidateError, compare_reports, load_report

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--undisputed", action="store_true", help="leave out the disputed checks")
    ap.add_argument("--boot", type=int, default=4000, help="bootstrap resamples")
    args = ap.parse_args(argv)
    a, b = load_report(args.a), load_report(args.b)
    if a is None or b is None:
        sys.exit(f"no report at {args.a if a is None else args.b}")
    if a.get("session") != b.get("session"):
        print(f"note: different sessions ({a.get('session')} and {b.get('session')})", file=sys.stderr)
    try:
        rows = compare_reports(a, b, args.undisputed, args.boot)
    except ValidateError as exc:
        sys.exit(str(exc))
    print(f"A = {a.get('run')}, B = {b.get('run')}; mean [95 % interval over frames]; keypoints: % of height "
          "(< 0 better), IoU (> 0 better)")  # fmt: skip
    print("| camera | checks | keypoints B - A | IoU B - A | keypoints A - init | IoU A - init "
          "| keypoints B - init | IoU B - init |")  # fmt: skip
    print("|---|---:|---|---|---|---|---|---|")
    for r in rows:
        cells = [
            _ci(getattr(r, f), "+.2f" if f.startswith("k") else "+.3f")
            for f in ("keypoints", "iou", "keypoints_gain_a", "iou_gain_a", "keypoints_gain_b", "iou_gain_b")
        ]
        print(f"| {r.camera} | {r.checks} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
