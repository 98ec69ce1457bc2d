"""Is one refinement better than another on a real capture? A paired comparison of
`mvcap validate` reports, with bootstrap intervals over frames.

    python benchmarks/compare_runs.py A.validate.json B.validate.json [A2.json B2.json ...] [--undisputed]

Each pair is one session (one person of a take; more pairs pool the take's people), both
reports validated on the same frames (`mvcap validate S --run R --frames F --out R.json`).
For each check (held-out camera, frame) the held-out keypoint distance (% of the person's
height) and silhouette IoU of A's and B's results are paired; the rows give, per held-out
camera and over all cameras, the mean of B - A and its 95 % interval from resampling the
frames (the checks of one frame share its motion and detections, so frames are the unit).
An interval that holds 0 says the capture cannot tell the two apart. The same for each
report's change from its initial estimate (result - init), which validate's verdicts read
(as medians and means). ``--undisputed`` leaves out the checks where the held-out camera's
detections sit more than the report's ``dispute_pct`` off the fitting cameras'
triangulation (another person, a mislabel): there the keypoint distance measures the
detector. The statistics: :func:`mvcap.validate.compare_reports`.
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
    ap.add_argument("reports", nargs="+", help="A.json B.json, then more pairs")
    ap.add_argument("--undisputed", action="store_true", help="leave out the disputed checks")
    ap.add_argument("--boot", type=int, default=4000, help="bootstrap resamples")
    args = ap.parse_args(argv)
    if len(args.reports) % 2:
        sys.exit("give the reports in pairs: A.json B.json [A2.json B2.json ...]")
    try:
        reports = [load_report(path) for path in args.reports]
        missing = [p for p, r in zip(args.reports, reports, strict=True) if r is None]
        if missing:
            sys.exit(f"no report at {', '.join(missing)}: write one with `mvcap validate S --run R --out FILE`")
        pairs = list(zip(reports[::2], reports[1::2], strict=True))
        for a, b in pairs:
            if a.get("session") != b.get("session"):
                print(f"note: a pair of different sessions: {a.get('session')}, {b.get('session')}", file=sys.stderr)
        rows = compare_reports(pairs, args.undisputed, args.boot)
    except ValidateError as exc:
        sys.exit(str(exc))
    a, b = pairs[0]
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
