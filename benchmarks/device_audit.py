"""What crosses between the host and the device when refinement runs on a GPU, measured on the
CPU: one frame refined on mvcap's simulated device (:class:`mvcap.devices.DeviceAudit`), every
host<->device crossing listed with its place in the code, calls and elements.

    python benchmarks/device_audit.py SESSION.h5 [--frame 0] [--predictor learned|flow]
        [--evidence] [--set key=value ...]

``--evidence``: with the session's detections (keypoints, masks): the safeguards' checks run
too. ``--predictor learned`` audits the default network (``lite_flowprior``, whose flow runs on
the host) unless ``--set learned_weights=lite`` picks the plain one. The CPU rasterizer stands
in for nvdiffrast (its output counts as on the device, as nvdiffrast's is). The table is what
docs/BENCHMARKS.md lists for the GPU path; a ``mixed`` or ``error`` row is a bug (on CUDA it
raises).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("session", type=Path)
    ap.add_argument("--frame", type=int, default=0)
    ap.add_argument("--predictor", default="learned", choices=("learned", "flow"))
    ap.add_argument("--evidence", action="store_true", help="use the session's detections (the safeguards)")
    ap.add_argument("--set", action="append", default=[], help="refine config override key=value")
    args = ap.parse_args(argv)

    import torch

    from mvcap.body import load_body_model
    from mvcap.capture import Session
    from mvcap.config import load_config
    from mvcap.devices import SIMULATED, DeviceAudit
    from mvcap.refine import (
        RefineConfig,
        estimate_appearance,
        frame_evidence,
        load_frame_inputs,
        make_predictor,
        refine_frame,
    )
    from mvcap.resources import resource_path

    torch.set_num_threads(1)
    cfg = load_config(RefineConfig, resource_path("configs/refine.toml"), [f"predictor={args.predictor}", *args.set])
    model = load_body_model()
    with Session.open(args.session) as s:
        x = load_frame_inputs(s, args.frame, cfg.views)
        appearance = estimate_appearance(model, s.subject)
        evidence, definition = None, None
        if args.evidence:
            if not s.has_detections:
                ap.error(f"{args.session} has no detections (run mvcap detect first)")
            from mvcap.keypoints import keypoint_set

            evidence = frame_evidence(s, args.frame, x.rig, cfg.cues)
            definition = keypoint_set(s.keypoint_format).definition(model)
    if args.predictor == "learned":
        from mvcap.nets.predictor import LearnedPredictor

        predictor = LearnedPredictor.load(cfg.learned_weights or None, device=SIMULATED, flow=cfg.flow,
                                          confidence_px=cfg.learned_confidence_px, fine_px=cfg.learned_fine_px,
                                          max_crop=cfg.learned_max_crop)  # fmt: skip
    else:
        predictor = make_predictor(args.predictor, cfg)
    with DeviceAudit() as audit:
        audit.place(model, getattr(predictor, "net", torch.nn.Module()))
        photos = torch.as_tensor(x.photos, device=SIMULATED)  # the frame's upload ("outside mvcap")
        res = refine_frame(model, x.rig, photos, x.init, predictor, cfg, appearance, None, evidence, definition)
    V, H, W = x.photos.shape[:3]
    ev = "yes" if args.evidence else "no"
    print(f"{args.session.name} frame {args.frame}: {V} views {W}x{H}, predictor {args.predictor}, evidence {ev}, "
          f"{cfg.outer_iterations} rounds, status {res.status}")  # fmt: skip
    print("kind      calls         bytes  where")
    print(audit.report())
    bad = audit.of_kind("mixed") or audit.of_kind("error")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
