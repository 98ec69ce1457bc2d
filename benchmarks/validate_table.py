"""Markdown rows from `mvcap validate` reports: one row per held-out camera, init -> result.

    python benchmarks/validate_table.py real_out/man.validate_flow-joint.json [...]
"""

import json
import sys


def _f(x, spec):
    return "–" if x is None else format(x, spec)


def main(paths):
    print("| subject / run | camera | frames | keypoints % height | silhouette IoU | photometric | verdict |")
    print("|---|---|---:|---|---|---|---|")
    for p in paths:
        d = json.load(open(p, encoding="utf-8"))
        who = p.rsplit("/", 1)[-1].split(".")[0]
        for c in d["cameras"]:
            print(
                f"| {who} / {d['run']} | {c['view']} | {c['frames']} "
                f"| {_f(c['init_keypoint_pct'], '.2f')} → {_f(c['result_keypoint_pct'], '.2f')} "
                f"| {_f(c['init_iou'], '.3f')} → {_f(c['result_iou'], '.3f')} "
                f"| {_f(c['init_photometric'], '.1f')} → {_f(c['result_photometric'], '.1f')} | {c['verdict']} |"
            )


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
