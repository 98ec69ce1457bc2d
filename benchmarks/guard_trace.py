"""Why did a held-out camera get worse? The acceptance guard's decisions, camera by camera.

    python benchmarks/guard_trace.py SESSION.h5 RUN --holdout cam01[,cam02] --frames 30 [--set cues.x=y ...]

Redoes what ``mvcap validate`` does for the given held-out cameras and frames (keypoint init
from the other cameras, then the run's refinement, with ``--set`` overrides of its config)
and prints, for every refinement round, the guard's verdict (the notes of
:func:`mvcap.refine.refine_frame`) and each fitted camera's keypoint distance (% of the
person's height) and 1 - IoU before and after, then the held-out camera's agreement.
``--drop cam01`` also leaves cam01 out of every refinement (the held-out camera's initial
estimate stays the one ``mvcap validate`` fits): which fitted camera drives a held-out change.
``--landmarks`` adds, per held-out camera, each landmark's mean 2D offset from the
detector's keypoint (projected - detected, pixels, over the frames), init -> result: which
landmarks a change of the keypoint distance comes from, and how it compares with the fixed
offsets between our landmark definitions and the detector's. ``--overlay DIR`` writes, per
held-out camera and frame, the photo with the detector's person mask (white), the initial
estimate's silhouette (orange) and the result's (blue) outlined, cropped around them.
"""

from __future__ import annotations

import argparse
import dataclasses
import warnings
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    from mvcap.body import BodyParams, load_body_model
    from mvcap.capture import Session
    from mvcap.config import from_dict, parse_overrides
    from mvcap.evidence import evidence_cost
    from mvcap.keypoints import keypoint_set
    from mvcap.refine import RefineConfig, estimate_appearance, frame_evidence, make_predictor, refine_frame
    from mvcap.validate import ValidateConfig, validate_run

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("session", type=Path)
    ap.add_argument("run")
    ap.add_argument("--holdout", required=True, help="held-out cameras, comma-separated")
    ap.add_argument("--frames", default="::10")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="refine config override k=v")
    ap.add_argument("--landmarks", action="store_true", help="per-landmark offsets in the held-out cameras")
    ap.add_argument("--overlay", type=Path, help="write held-out overlays (PNG) into this folder")
    ap.add_argument("--drop", default="", help="cameras also left out of every refinement (comma-separated), "
                    "the held-out camera's init unchanged: which fitted camera drives a change")  # fmt: skip
    args = ap.parse_args(argv)

    model = load_body_model()
    with Session.open(args.session, "r") as s:
        stored = dict(s.read_results(args.run).config)
        cfg = from_dict(RefineConfig, _merge(stored, parse_overrides(args.overrides)), where=f"run {args.run!r}")
        cfg = dataclasses.replace(cfg, views=())
        definition = keypoint_set(s.keypoint_format).definition(model)
        predictor = make_predictor(cfg.predictor, cfg)
        appearance = estimate_appearance(model, s.subject, cfg.appearance)

        fitted: dict[tuple[int, str], tuple] = {}  # (frame, held-out camera) -> init and result

        drop = [n for n in args.drop.split(",") if n]

        def refiner(t, rig, photos, pose0, betas, transl0):
            init = BodyParams(pose0.numpy()[None], betas.numpy()[None], transl0.numpy()[None])
            held = next(n for n in args.holdout.split(",") if n not in rig.names)
            keep = [v for v, n in enumerate(rig.names) if n not in drop]
            rig, photos = rig.subset([rig.names[v] for v in keep]), photos[keep]
            ev = frame_evidence(s, t, rig, cfg.cues)
            res = refine_frame(model, rig, photos, init, predictor, cfg, appearance, None, ev, definition)
            before = evidence_cost(model, definition, rig, pose0, betas, transl0, ev)[1]
            after = evidence_cost(model, definition, rig, res.pose_rotvecs, betas, res.transl, ev)[1]
            weights = np.round(res.view_weights, 3)
            print(f"frame {t}, fitted {', '.join(rig.names)}: {res.status}, view weights {weights}")
            for note in res.notes:
                print(f"    {note}")
            for v, name in enumerate(rig.names):
                b, a = before[v], after[v]
                print(f"    {name}: keypoints {100 * b[0]:.2f} -> {100 * a[0]:.2f} % height, "
                      f"1 - IoU {b[1]:.3f} -> {a[1]:.3f}")  # fmt: skip
            fitted[(t, held)] = (init, BodyParams(res.pose_rotvecs[None], res.betas[None], res.transl[None]))
            return res.pose_rotvecs, res.transl

        report = validate_run(args.session, args.run, ValidateConfig(frames=args.frames),
                              holdout=args.holdout.split(","), model=model, refiner=refiner, progress=False,
                              in_view=False)  # fmt: skip
    for row in report.holdout:
        if row.result is None:
            print(f"held out {row.view}, frame {row.frame}: {row.note}")
            continue
        i, r = row.init, row.result
        print(f"held out {row.view}, frame {row.frame}: keypoints {i.keypoint_median_pct:.2f} -> "
              f"{r.keypoint_median_pct:.2f} % height, IoU {i.iou:.3f} -> {r.iou:.3f}")  # fmt: skip
        if args.landmarks:
            for view in args.holdout.split(","):
                bodies = {t: b for (t, v), b in fitted.items() if v == view}
                _landmark_offsets(model, definition, args.session, view, bodies)
    if args.overlay:
        _overlays(model, args.session, fitted, args.overlay)
    return 0


def _overlays(model, session_path: Path, fitted: dict, out: Path) -> None:
    """Per (frame, held-out camera) of ``fitted``: the photo with the person mask (white), the
    initial estimate's silhouette (orange) and the result's (blue) outlined; PNGs in ``out``."""
    import cv2
    import torch

    from mvcap.capture import Session
    from mvcap.evidence import view_evidence
    from mvcap.render import render

    out.mkdir(parents=True, exist_ok=True)
    with Session.open(session_path, "r") as s:
        for (t, view), bodies in sorted(fitted.items()):
            cam = s.rig.subset([view])
            v = s.rig.index(view)
            stored = s.read_masks(t)
            ev = view_evidence(cam, s.read_keypoints([t])[0][v], None if stored is None else stored[v],
                               s.read_frame(t, [view])[0])  # fmt: skip
            img = np.ascontiguousarray(ev.photo[..., ::-1])  # BGR for OpenCV
            masks = [ev.mask]
            for params in bodies:
                with torch.no_grad():
                    verts = model(**params.to_torch()).vertices[0]
                _, passes = render(cam.without_distortion(), verts, model.faces, passes=("mask",))
                masks.append(passes.get("mask").numpy()[0, ..., 0] > 0)
            for m, colour in zip(masks, ((255, 255, 255), (0, 140, 255), (255, 90, 0)), strict=True):
                if m is not None and m.any():
                    contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
                    cv2.drawContours(img, contours, -1, colour, 3, cv2.LINE_AA)
            ys, xs = np.nonzero(np.any([m for m in masks if m is not None], axis=0))
            pad = 40
            crop = img[max(0, ys.min() - pad) : ys.max() + pad, max(0, xs.min() - pad) : xs.max() + pad]
            cv2.imwrite(str(out / f"{view}_f{t:04d}.png"), crop)
    print(f"overlays in {out}: white the person mask, orange the initial estimate, blue the result")


def _landmark_offsets(model, definition, session_path: Path, view: str, bodies: dict) -> None:
    """Print each landmark's mean offset from the detector in ``view`` (pixels), init -> result;
    bodies: frame -> (init, result) :class:`~mvcap.body.BodyParams`."""
    import torch

    from mvcap.body import BodyParams
    from mvcap.cameras import project
    from mvcap.capture import Session

    if not bodies:
        return
    frames = sorted(bodies)
    with Session.open(session_path, "r") as s:
        cam = s.rig.subset([view])
        detected = s.read_keypoints(frames)[:, s.rig.index(view)]  # (F, K, 3)
    offsets = []  # per body (init, result): (F, K, 2), NaN where the detector is not confident
    for which in (0, 1):
        params = BodyParams.concatenate([bodies[t][which] for t in frames])
        with torch.no_grad():
            out = model(**params.to_torch())
            uv = project(cam, definition.evaluate(out.joints.double(), out.vertices.double()), distort=True)
        uv = uv[:, 0].cpu().numpy()  # (F, 1, K, 2): the one camera
        ok = definition.defined & (detected[..., 2] >= 0.5)
        offsets.append(np.where(ok[..., None], uv - detected[..., :2], np.nan))
    print(f"held out {view}: mean offset projected - detected over {len(frames)} frames (px), init -> result")
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a landmark never detected: all-NaN means
        for k, name in enumerate(definition.names):
            (d0, d1), (m0, m1) = ([np.nanmean(np.linalg.norm(o[:, k], axis=-1)) for o in offsets],
                                  [np.nanmean(o[:, k], axis=0) for o in offsets])  # fmt: skip
            if np.isfinite(d0):
                print(f"    {name:<18} |offset| {d0:6.1f} -> {d1:6.1f}   "
                      f"(x, y) ({m0[0]:6.1f}, {m0[1]:6.1f}) -> ({m1[0]:6.1f}, {m1[1]:6.1f})")  # fmt: skip


def _merge(base: dict, extra: dict) -> dict:
    """Nested dict ``base`` with ``extra``'s values (nested dicts merged key by key)."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


if __name__ == "__main__":
    raise SystemExit(main())
