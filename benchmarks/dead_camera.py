"""Copy benchmark sessions with one camera dead: its frames black, its detections empty.

    python benchmarks/dead_camera.py SRC_DIR DST_DIR --camera cam03

What a capture looks like when a camera's feed died: the refinement must name the camera
and fit the others (issue 16's dead-camera row). Results runs are not copied.
"""

import argparse
import shutil
from pathlib import Path

import numpy as np

from mvcap.capture import Session


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    ap.add_argument("--camera", required=True, help="the camera to kill, e.g. cam03")
    args = ap.parse_args()
    args.dst.mkdir(parents=True, exist_ok=True)
    for path in sorted(args.src.glob("*.h5")):
        out = args.dst / path.name
        shutil.copy(path, out)
        with Session.open(out, mode="a") as s:
            v = s.rig.index(args.camera)
            for t in range(s.num_frames):
                imgs = s.read_frame(t)
                imgs[v] = 0
                s.write_frame(t, imgs)
                if s.has_detections and s.detections_written[t]:
                    kp = s.read_keypoints([t])[0]
                    kp[v] = np.nan
                    kp[v, :, 2] = 0.0
                    masks = s.read_masks(t)
                    if masks is not None:
                        masks[v] = 0
                    s.write_detections(t, kp, masks, s.keypoint_format)
        print(f"{out}: {args.camera} dead")


if __name__ == "__main__":
    main()
