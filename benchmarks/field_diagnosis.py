"""Where do the displacement fields go wrong? Predictors compared on a capture's own evidence.

    python benchmarks/field_diagnosis.py SESSION.h5 [--frames 0,20,40] [--predictors flow,learned]
        [--set learned_fine_px=2 ...]   (refine.toml overrides)

For each frame the initial estimate is rendered in every view (as ``mvcap refine`` renders
it) and each predictor's field is turned into per-vertex 2D targets (as the fit sees them).
The targets are then scored against what an independent detector says, which needs no
ground truth (the session's detections: ``mvcap detect``):

* **on person**: the share of the targets of visible vertices that land inside the
  detector's person mask, before (the estimate's own projection) and after the field;
* **landmarks**: the median distance of the detector's confident keypoints from the
  landmarks the targets imply, in % of the person's height, before and after
  (:func:`mvcap.cues.landmark_shift`, what the refinement's field check measures);
* **by body part**: the same landmark distances split into head, torso, arms and legs;
* **field size**: the median target displacement (px) and, between the first two
  predictors, the median distance between their targets (px);
* **resolution**: the person's height in pixels, and image pixels per network crop pixel;
* **against ground truth** (synthetic sessions only): each visible vertex's distance from
  its true projection before (the estimate) and after (its target), median px, split by how
  far the estimate was off (the displacement the field had to find) and by body part.

A field that transfers moves targets onto the person and towards the keypoints; one that
does not shows it here, view by view, before any fit is run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from mvcap.cues import BODY_PARTS as PARTS  # noqa: E402


def _on_person(uv: np.ndarray, vis: np.ndarray, mask: np.ndarray) -> float:
    """Share of the visible vertices' image points (N, 2) inside the person mask (H, W)."""
    x = np.round(uv[vis, 0]).astype(int)
    y = np.round(uv[vis, 1]).astype(int)
    inside = (x >= 0) & (y >= 0) & (x < mask.shape[1]) & (y < mask.shape[0])
    hit = np.zeros(x.shape, bool)
    hit[inside] = mask[y[inside], x[inside]]
    return float(hit.mean())


ERROR_BINS = (0.0, 2.0, 5.0, 10.0, np.inf)  # px: how far the estimate's vertex is from its true projection


def _bin_name(k: int) -> str:
    a, b = ERROR_BINS[k], ERROR_BINS[k + 1]
    return f"> {a:g} px" if np.isinf(b) else f"{a:g}-{b:g} px"


def _part_median(d: np.ndarray, sel: np.ndarray) -> float:
    return float(np.nanmedian(d[sel])) if sel.any() and np.isfinite(d[sel]).any() else float("nan")


def diagnose(session_path: Path, frames: list[int], predictors: list[str], overrides=()) -> list[dict]:
    from mvcap.body import load_body_model
    from mvcap.cameras import project, undistort_points
    from mvcap.capture import Session
    from mvcap.config import load_config
    from mvcap.cues import body_part_ids, landmark_shift, skin_joints
    from mvcap.keypoints import keypoint_set
    from mvcap.refine import (
        RefineConfig,
        _vertex_targets,
        estimate_appearance,
        estimate_request,
        frame_evidence,
        load_frame_inputs,
        make_predictor,
    )

    model = load_body_model()
    cfg = load_config(RefineConfig, "refine.toml", list(overrides))
    preds = {name: make_predictor(name, cfg) for name in predictors}
    skin_joint = skin_joints(model)  # as the field check moves joints
    rows = []
    with Session.open(session_path) as s:
        if not s.has_detections:
            raise SystemExit(f"{session_path} has no detections; run `mvcap detect` first")
        definition = keypoint_set(s.keypoint_format).definition(model)
        lm_part = np.array([""] + list(PARTS), dtype=object)[body_part_ids(model, definition)[1] + 1]
        appearance = estimate_appearance(model, s.subject, cfg.appearance)
        template = model.template_vertices()[0]
        truth = s.read_ground_truth() if s.has_ground_truth else None
        vert_part = body_part_ids(model, definition)[0]
        for t in frames:
            inputs = load_frame_inputs(s, t)
            rig, photos, init = inputs.rig, inputs.photos, inputs.init
            pinhole = rig.without_distortion()
            evidence = frame_evidence(s, t, rig, cfg.cues)
            p = init.to_torch()
            with torch.no_grad():
                body = model(p["pose_rotvecs"], p["betas"], p["transl"])
            verts, joints = body.vertices[0], body.joints[0]
            req = estimate_request(model, pinhole, photos, verts, appearance, template)
            uv_now_t = project(pinhole, verts, distort=False)  # (V, N, 2)
            joints_uv_t = project(pinhole, joints, distort=False)  # (V, 24, 2)
            uv_now = uv_now_t.numpy()
            uv_true = None
            if truth is not None:  # every view's true vertex projections
                with torch.no_grad():
                    uv_true = project(pinhole, model(**truth.slice(t).to_torch()).vertices[0], distort=False).numpy()
            targets, shifts = {}, {}
            for name, predictor in preds.items():
                disp = predictor(req)
                uv_t, w, _ = _vertex_targets(pinhole, verts, disp.flow, disp.confidence, req.fragments, model.faces,
                                             cfg.min_visible_vertices)  # fmt: skip
                targets[name] = (uv_t.numpy(), w.numpy())
                shifts[name] = landmark_shift(definition, uv_now_t, joints_uv_t, uv_t, w, skin_joint)
            # landmarks every predictor moves: the same set is scored before and after
            scored = np.logical_and.reduce([sh[2] for sh in shifts.values()])
            for v, cam in enumerate(rig):
                ev = evidence[v]
                if ev is None:
                    continue
                kp = ev.keypoints
                ok = (kp[:, 2] >= cfg.cues.min_keypoint_confidence) & np.isfinite(kp[:, :2]).all(1) & scored[v]
                kp_u = undistort_points(rig.subset([cam.name]), torch.as_tensor(kp[None, :, :2])).numpy()[0]
                H, mask = ev.height_px, ev.mask
                vis = next(iter(targets.values()))[1][v] > 0
                row = {"frame": t, "view": cam.name, "height_px": H, "visible": int(vis.sum())}
                row["image_px_per_crop_px"] = 1.2 * H / 96  # the lite network's 96² crop (crop_scale 1.2)

                def dist(points, ok=ok, kp_u=kp_u, H=H):
                    d = np.linalg.norm(points - kp_u, axis=-1) / H * 100
                    return np.where(ok, d, np.nan)

                d0 = dist(next(iter(shifts.values()))[0][v])
                row["on_person_before"] = _on_person(uv_now[v], vis, mask) if mask is not None else float("nan")
                row["kp_before"] = float(np.nanmedian(d0)) if ok.any() else float("nan")
                for part in PARTS:
                    row[f"kp_before_{part}"] = _part_median(d0, lm_part == part)
                for name, (uv_t, w) in targets.items():
                    tv = np.where((w[v] > 0)[:, None], uv_t[v], np.nan)
                    d1 = dist(shifts[name][1][v])
                    on = _on_person(np.nan_to_num(tv, nan=-1e6), vis, mask) if mask is not None else float("nan")
                    row[f"{name}_on_person"] = on
                    row[f"{name}_kp"] = float(np.nanmedian(d1)) if ok.any() else float("nan")
                    for part in PARTS:
                        row[f"{name}_kp_{part}"] = _part_median(d1, lm_part == part)
                    row[f"{name}_move_px"] = float(np.nanmedian(np.linalg.norm(tv - uv_now[v], axis=-1)))
                if uv_true is not None:
                    e0 = np.linalg.norm(uv_now[v] - uv_true[v], axis=-1)
                    has = np.logical_and.reduce([w[v] > 0 for _, w in targets.values()])  # every predictor has a target
                    row["gt_vertices"] = int(has.sum())
                    bins = np.digitize(e0, ERROR_BINS[1:-1])
                    for k in range(len(ERROR_BINS) - 1):
                        row[f"gt_share_b{k}"] = float((has & (bins == k)).sum() / max(has.sum(), 1))
                    errs = {"init": e0}
                    errs |= {n: np.linalg.norm(uv_t[v] - uv_true[v], axis=-1) for n, (uv_t, _) in targets.items()}
                    for n, e in errs.items():
                        row[f"{n}_gt_px"] = float(np.median(e[has])) if has.any() else float("nan")
                        for k in range(len(ERROR_BINS) - 1):
                            sel = has & (bins == k)
                            row[f"{n}_gt_px_b{k}"] = float(np.median(e[sel])) if sel.any() else float("nan")
                        for i, part in enumerate(PARTS):
                            sel = has & (vert_part == i)
                            row[f"{n}_gt_px_{part}"] = float(np.median(e[sel])) if sel.any() else float("nan")
                if len(targets) >= 2:
                    (a, (ua, wa)), (b, (ub, wb)) = list(targets.items())[:2]
                    both = (wa[v] > 0) & (wb[v] > 0)
                    row[f"{a}_vs_{b}_px"] = float(np.median(np.linalg.norm(ua[v][both] - ub[v][both], axis=-1)))
                rows.append(row)
                cells = [f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()]
                print(" ".join(cells), flush=True)
    return rows


def summary(rows: list[dict], predictors: list[str]) -> str:
    def med(key, sel=None):
        vals = [r[key] for r in rows if sel is None or r["view"] == sel]
        vals = [x for x in vals if x == x]
        return float(np.median(vals)) if vals else float("nan")

    lines = ["| view | person px | image px / crop px | on person: init | " + " | ".join(predictors)
             + " | landmarks % height: init | " + " | ".join(predictors) + " | median move px: "
             + " | ".join(predictors) + " |"]  # fmt: skip
    n = 3 + 2 * len(predictors) + 1 + len(predictors)
    lines.append("|---|" + "---:|" * (n + 1))
    for view in sorted({r["view"] for r in rows}) + [None]:
        cells = [view or "all", f"{med('height_px', view):.0f}", f"{med('image_px_per_crop_px', view):.1f}",
                 f"{med('on_person_before', view):.3f}"]  # fmt: skip
        cells += [f"{med(f'{p}_on_person', view):.3f}" for p in predictors]
        cells += [f"{med('kp_before', view):.2f}"] + [f"{med(f'{p}_kp', view):.2f}" for p in predictors]
        cells += [f"{med(f'{p}_move_px', view):.1f}" for p in predictors]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| body part | landmarks % height: init | " + " | ".join(predictors) + " |",
              "|---|" + "---:|" * (1 + len(predictors))]  # fmt: skip
    for part in PARTS:
        cells = [part, f"{med(f'kp_before_{part}'):.2f}"] + [f"{med(f'{p}_kp_{part}'):.2f}" for p in predictors]
        lines.append("| " + " | ".join(cells) + " |")
    if any("init_gt_px" in r for r in rows):
        names = ["init", *predictors]
        lines += ["", "| against ground truth: estimate off by | share of vertices | "
                  + " | ".join(f"{n} px" for n in names) + " |", "|---|" + "---:|" * (1 + len(names))]  # fmt: skip
        for k in range(len(ERROR_BINS) - 1):
            cells = [_bin_name(k), f"{med(f'gt_share_b{k}'):.2f}"] + [f"{med(f'{n}_gt_px_b{k}'):.2f}" for n in names]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("| all | 1.00 | " + " | ".join(f"{med(f'{n}_gt_px'):.2f}" for n in names) + " |")
        for part in PARTS:
            lines.append(f"| {part} | | " + " | ".join(f"{med(f'{n}_gt_px_{part}'):.2f}" for n in names) + " |")
    if len(predictors) >= 2:
        lines.append(f"\nmedian distance between {predictors[0]}'s and {predictors[1]}'s targets: "
                     f"{med(f'{predictors[0]}_vs_{predictors[1]}_px'):.1f} px")  # fmt: skip
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("session", type=Path)
    ap.add_argument("--frames", default="0,20,40")
    ap.add_argument("--predictors", default="flow,learned")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="refine.toml override KEY=VALUE")
    args = ap.parse_args(argv)
    predictors = args.predictors.split(",")
    rows = diagnose(args.session, [int(f) for f in args.frames.split(",")], predictors, args.overrides)
    print()
    print(summary(rows, predictors))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
