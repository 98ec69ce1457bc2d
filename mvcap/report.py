"""The run report: one self-contained HTML page per results run.

What a person needs to judge a capture at a glance: the key numbers (frames done, failures,
residuals, speed), accuracy against ground truth when there is one, per-frame plots
(per-view reprojection residual, fit iterations, time), before/after overlays on a few
frames, and a turntable of the fitted body. Every image and plot is embedded as a data URI,
so the page can be mailed or archived as one file; it needs no JavaScript.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from mvcap.body import BodyModel, BodyParams, load_body_model
from mvcap.cameras import Camera, Rig
from mvcap.capture import Results, Session
from mvcap.overlay import OverlayConfig, before_after, headlight, predicted_displacement, view_strip
from mvcap.render import render

__all__ = ["ReportConfig", "build_report", "turntable_frames", "accuracy"]


@dataclass(frozen=True)
class ReportConfig:
    overlay_frames: int = 3  # frames shown with before/after overlays (evenly spaced)
    overlay_width: int = 640  # each view's before|after strip is scaled to this width
    turntable_frames: int = 2  # frames shown as turntables
    turntable_steps: int = 16  # views around the body per turntable
    turntable_size: int = 240  # pixels
    jpeg_quality: int = 85
    arrows: str = ""  # "flow" or "learned": that predictor's field on the initial estimate, as arrows

    def __post_init__(self):
        if self.arrows not in ("", "flow", "learned"):
            raise ValueError(f"report arrows must be '', 'flow' or 'learned', got {self.arrows!r}")


# ------------------------------------------------------------------------------------------
# images and plots as data URIs
# ------------------------------------------------------------------------------------------
def _jpeg_uri(img: np.ndarray, quality: int) -> str:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode()


def _gif_uri(frames: Sequence[np.ndarray], ms_per_frame: int = 120) -> str:
    from PIL import Image

    ims = [Image.fromarray(f).convert("P", palette=Image.Palette.ADAPTIVE, colors=128) for f in frames]
    buf = io.BytesIO()
    ims[0].save(buf, format="GIF", save_all=True, append_images=ims[1:], duration=ms_per_frame, loop=0)
    return "data:image/gif;base64," + base64.b64encode(buf.getvalue()).decode()


def _fig_uri(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _resize_width(img: np.ndarray, width: int) -> np.ndarray:
    h, w = img.shape[:2]
    if w <= width:
        return img
    return cv2.resize(img, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)


# ------------------------------------------------------------------------------------------
# content
# ------------------------------------------------------------------------------------------
def accuracy(model: BodyModel, pred: BodyParams, gt: BodyParams) -> dict[str, np.ndarray]:
    """Per-frame errors in millimetres of ``pred`` against ``gt`` (same frames):
    keys MPJPE, PA-MPJPE, PVE, PA-PVE -> (T,) float."""
    from mvcap.metrics import mpjpe, pa_mpjpe, pa_pve, pve

    with torch.no_grad():
        p = model(**pred.to_torch())
        g = model(**gt.to_torch())
    mm = 1000.0
    return {
        "MPJPE": mpjpe(p.joints, g.joints).numpy() * mm,
        "PA-MPJPE": pa_mpjpe(p.joints, g.joints).numpy() * mm,
        "PVE": pve(p.vertices, g.vertices).numpy() * mm,
        "PA-PVE": pa_pve(p.vertices, g.vertices).numpy() * mm,
    }


def _turntable_rig(center: np.ndarray, height: float, steps: int, size: int) -> Rig:
    """``steps`` pinhole cameras on a circle around ``center`` (Y up), slightly above it."""
    dist = max(2.2, 1.6 * height)
    f = size / (2 * math.tan(math.radians(24)))
    K = np.array([[f, 0, (size - 1) / 2], [0, f, (size - 1) / 2], [0, 0, 1.0]])
    cams = []
    for i in range(steps):
        az = 2 * math.pi * i / steps
        C = center + np.array([dist * math.sin(az), 0.35 * height, dist * math.cos(az)])
        fwd = center - C
        fwd /= np.linalg.norm(fwd)
        x = np.cross(fwd, [0.0, 1.0, 0.0])
        x /= np.linalg.norm(x)
        y = np.cross(fwd, x)
        R = np.stack([x, y, fwd])
        cams.append(Camera(f"turn{i:02d}", K, np.zeros(5), R, -R @ C, (size, size)))
    return Rig(tuple(cams))


def turntable_frames(
    model: BodyModel, pose_rotvecs, betas, transl, appearance=None, steps: int = 16, size: int = 240
) -> list[np.ndarray]:
    """Render the body from ``steps`` cameras circling it: list of (size, size, 3) uint8.
    appearance: a :class:`mvcap.refine.Appearance` (None: grey, headlight-shaded)."""
    pose = torch.as_tensor(np.asarray(pose_rotvecs, np.float32)).reshape(1, -1, 3)
    b = torch.as_tensor(np.asarray(betas, np.float32)).reshape(1, -1)
    tr = torch.as_tensor(np.asarray(transl, np.float32)).reshape(1, 3)
    with torch.no_grad():
        verts = model(pose, b, tr).vertices[0]
    lo, hi = verts.min(0).values.numpy(), verts.max(0).values.numpy()
    center = (lo + hi) / 2
    rig = _turntable_rig(center.astype(np.float64), float(hi[1] - lo[1]), steps, size)
    textured = appearance is not None and appearance.textured
    kwargs = appearance.render_kwargs() if textured else {}
    _, passes = render(rig, verts, model.faces, passes=("rgb", "normal", "mask"), **kwargs)
    rgb = passes.get("rgb").numpy()
    normal = passes.get("normal").numpy()
    mask = passes.get("mask").numpy()[..., 0] > 0
    if not textured:  # untextured: headlight shading reads better than the default light
        rgb = headlight(normal)[..., None] * np.array([0.75, 0.85, 1.0])
    ramp = np.linspace(0.16, 0.05, size, dtype=np.float32)[:, None, None]
    bg = np.broadcast_to(ramp, (size, size, 3))
    out = np.where(mask[..., None], rgb, bg[None])
    return [np.clip(o * 255, 0, 255).astype(np.uint8) for o in out]


def _pick(frames: np.ndarray, n: int) -> list[int]:
    if frames.size == 0 or n <= 0:
        return []
    idx = np.unique(np.linspace(0, frames.size - 1, min(n, frames.size)).round().astype(int))
    return [int(frames[i]) for i in idx]


def _plots(res: Results, done: np.ndarray, errors: dict | None) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    t = np.flatnonzero(done)
    fig, ax = plt.subplots(figsize=(9, 3))
    for v, name in enumerate(res.view_names):
        ax.plot(t, res.residual_px[t, v], marker=".", lw=1, label=name)
    ax.set_xlabel("frame")
    ax.set_ylabel("residual (px)")
    ax.set_title("Per-view reprojection residual of the fitted vertices")
    ax.grid(alpha=0.3)
    if len(res.view_names) <= 16:
        ax.legend(fontsize=7, ncol=min(8, len(res.view_names)), loc="upper right")
    out.append(("Per-view residual", _fig_uri(fig)))

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 2.6))
    a1.bar(t, res.iterations[t], color="#4a7bd0")
    a1.set_xlabel("frame")
    a1.set_ylabel("fit iterations")
    a2.bar(t, res.seconds[t], color="#d07b4a")
    a2.set_xlabel("frame")
    a2.set_ylabel("seconds")
    for a in (a1, a2):
        a.grid(alpha=0.3)
    fig.suptitle("Solver iterations and wall time per frame")
    out.append(("Iterations and time", _fig_uri(fig)))

    if errors:
        fig, ax = plt.subplots(figsize=(9, 3))
        for key, style in (("init MPJPE", "--"), ("MPJPE", "-"), ("init PVE", ":"), ("PVE", "-.")):
            if key in errors:
                ax.plot(t, errors[key], style, marker=".", lw=1, label=key)
        ax.set_xlabel("frame")
        ax.set_ylabel("mm")
        ax.set_title("Error against ground truth")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        out.append(("Accuracy per frame", _fig_uri(fig)))
    return out


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
header{background:#1d2330;color:#fff;padding:18px 28px}
header h1{margin:0;font-size:22px} header p{margin:4px 0 0;color:#b8c0d0;font-size:13px}
main{padding:8px 28px 40px;max-width:1400px}
section{background:#fff;border-radius:8px;padding:14px 18px;margin:16px 0;box-shadow:0 1px 3px rgba(0,0,0,.08)}
h2{font-size:17px;margin:0 0 10px}
.cards{display:flex;flex-wrap:wrap;gap:10px}
.card{background:#f0f3f8;border-radius:6px;padding:8px 14px;min-width:120px}
.card .v{font-size:20px;font-weight:600} .card .k{font-size:12px;color:#5a6478}
.bad .v{color:#c0392b} td.bad,li.bad{color:#c0392b;font-weight:600}
table{border-collapse:collapse;font-size:14px} td,th{padding:4px 10px;border-bottom:1px solid #e3e6ec;text-align:right}
th:first-child,td:first-child{text-align:left}
img{max-width:100%} .grid{display:flex;flex-wrap:wrap;gap:8px} .grid figure{margin:0}
figcaption{font-size:12px;color:#5a6478} pre{font-size:12px;background:#f0f3f8;padding:8px;overflow:auto}
"""


def _figure(src: str, alt: str, caption: str) -> str:
    return f"<figure><img alt='{html.escape(alt)}' src='{src}'><figcaption>{html.escape(caption)}</figcaption></figure>"


def _card(key: str, value: str, bad: bool = False) -> str:
    cls = "card bad" if bad else "card"
    return f'<div class="{cls}"><div class="v">{html.escape(value)}</div><div class="k">{html.escape(key)}</div></div>'


def _fmt(x, spec: str) -> str:
    return "–" if x is None else format(x, spec)


def _validation_section(v: dict) -> str:
    """Cross-validation tables (held-out cameras, in-view) and one verdict per camera."""
    from mvcap.validate import OTHERS_NOTE, ValidateConfig, disputed_sentence, verdict_sentence

    def table(cameras: list[dict]) -> str:
        others = any(c.get("others_keypoint_pct") is not None for c in cameras)  # reports before it have none
        head = (
            "<tr><th>camera</th><th>frames</th><th>keypoints, % of height (init → result)</th>"
            "<th>silhouette IoU</th><th>photometric (0-255)</th><th>verdict</th>"
            + ("<th>other cameras' keypoints, %</th>" if others else "")
            + "</tr>"
        )
        rows = "".join(
            f"<tr><td>{html.escape(c['view'])}</td><td>{c['frames']}</td>"
            f"<td>{_fmt(c['init_keypoint_pct'], '.2f')} → {_fmt(c['result_keypoint_pct'], '.2f')}</td>"
            f"<td>{_fmt(c['init_iou'], '.3f')} → {_fmt(c['result_iou'], '.3f')}</td>"
            f"<td>{_fmt(c['init_photometric'], '.1f')} → {_fmt(c['result_photometric'], '.1f')}</td>"
            f"<td class='{'bad' if c['verdict'] == 'worse' else ''}'>{html.escape(c['verdict'])}</td>"
            + (f"<td>{_fmt(c.get('others_keypoint_pct'), '.2f')}</td>" if others else "")
            + "</tr>"
            for c in cameras
        )
        note = f"<p>{html.escape(OTHERS_NOTE)}</p>" if others else ""
        return f"<table>{head}{rows}</table>{note}"

    verdicts = "".join(
        f"<li class='{'bad' if c['verdict'] == 'worse' else ''}'>"
        f"{html.escape(verdict_sentence(c['view'], c['verdict']))}</li>"
        for c in v.get("cameras", [])
    )
    limit = v.get("dispute_pct", ValidateConfig.dispute_pct)
    verdicts += "".join(  # reports written before the count have none
        f"<li>{html.escape(disputed_sentence(c['view'], c['disputed'], c['frames'], limit))}</li>"
        for c in v.get("cameras", [])
        if c.get("disputed")
    )
    parts = [
        "<section id='validation'><h2>Cross-validation without ground truth</h2>",
        f"<p>Each camera left out in turn: the initial estimate and the {html.escape(str(v.get('predictor')))} "
        f"refinement were redone with the other cameras and measured in the one left out, against the detector's "
        f"keypoints and person mask ({len(v.get('frames', []))} frames).</p>",
        table(v.get("cameras", [])),
        f"<ul>{verdicts}</ul>",
    ]
    rig = "".join(f"<li class='bad'>{html.escape(w)}</li>" for w in v.get("rig_warnings", []))
    if rig:  # then the held-out numbers measure the calibration more than the fit
        parts += ["<h3>The rig does not fit this take</h3>", f"<ul>{rig}</ul>"]
    if v.get("in_view_cameras"):
        parts += ["<h3>In-view: stored initial estimate → stored result, views the run used</h3>",
                  table(v["in_view_cameras"])]  # fmt: skip
    parts.append("</section>")
    return "".join(parts)


def build_report(
    session_path: str | Path,
    run_name: str,
    out_path: str | Path,
    cfg: ReportConfig = ReportConfig(),
    summary: dict | None = None,
    ground_truth: BodyParams | None = None,
    model: BodyModel | None = None,
    overlay_cfg: OverlayConfig = OverlayConfig(),
    validation: dict | None = None,
) -> Path:
    """Write the HTML report of results run ``run_name`` of a session to ``out_path``.

    summary: extra key facts from the pipeline (e.g. ``{"stages": {...}, "failures": [...]}``);
    ground_truth: per-frame ground truth for all T frames (default: the session's, if any);
    validation: a cross-validation of the run (:mod:`mvcap.validate`; default: the one stored
    beside the session by ``mvcap validate``, if any).
    """
    from mvcap.refine import load_frame_inputs, subject_appearance
    from mvcap.validate import load_report, report_path

    if validation is None:
        validation = load_report(report_path(session_path, run_name))

    model = model or load_body_model()
    out_path = Path(out_path)
    summary = dict(summary or {})
    with Session.open(session_path) as s:
        res = s.read_results(run_name)
        done = res.done.astype(bool)
        t_done = np.flatnonzero(done)
        init = s.read_init(require_valid=False)
        if ground_truth is None and s.has_ground_truth:
            ground_truth = s.read_ground_truth()
        rig = s.rig
        subject = s.subject
        T = s.num_frames

        errors = None
        acc_rows = []
        if ground_truth is not None and t_done.size:
            gt = ground_truth.slice(t_done)
            e_res = accuracy(model, res.params.slice(t_done), gt)
            errors = {k: v for k, v in e_res.items()}
            rows = [("refined", e_res)]
            init_ok = np.isfinite(init.pose_rotvecs[t_done]).all(axis=(1, 2))
            if init_ok.all():
                e_init = accuracy(model, init.slice(t_done), gt)
                errors["init MPJPE"], errors["init PVE"] = e_init["MPJPE"], e_init["PVE"]
                rows.insert(0, ("initial estimate", e_init))
            acc_rows = [(name, {k: float(np.mean(v)) for k, v in e.items()}) for name, e in rows]

        overlays = []
        predictor = None
        if cfg.arrows:
            from mvcap.refine import RefineConfig, make_predictor

            predictor = make_predictor(cfg.arrows, RefineConfig(predictor=cfg.arrows), subject=s.subject)
        for t in _pick(t_done, cfg.overlay_frames):
            inputs = load_frame_inputs(s, t)
            photos = inputs.photos
            before = (inputs.init.pose_rotvecs[0], res.betas[t], inputs.init.transl[0])
            after = (res.pose_rotvecs[t], res.betas[t], res.transl[t])
            flow = None
            if predictor is not None and inputs.has_init:
                flow = predicted_displacement(model, rig, photos, before, predictor, subject)
            imgs = before_after(model, rig, photos, before, after, overlay_cfg, flow)
            overlays.append(
                (
                    t,
                    [
                        (
                            rig.names[v],
                            _jpeg_uri(_resize_width(view_strip(im, rig, v, 2), cfg.overlay_width), cfg.jpeg_quality),
                        )
                        for v, im in enumerate(imgs)
                    ],
                )
            )

        appearance = subject_appearance(model, subject)
        turntables = []
        for t in _pick(t_done, cfg.turntable_frames):
            fr = turntable_frames(
                model,
                res.pose_rotvecs[t],
                res.betas[t],
                res.transl[t],
                appearance,
                cfg.turntable_steps,
                cfg.turntable_size,
            )
            turntables.append((t, _gif_uri(fr)))
        plots = _plots(res, done, errors) if t_done.size else []

    # ---- key facts
    resid = res.residual_px[done]
    mean_resid = float(np.nanmean(resid)) if resid.size and np.isfinite(resid).any() else float("nan")
    failures = summary.pop("failures", [])
    cards = [
        _card("frames refined", f"{int(done.sum())} / {T}", bad=int(done.sum()) < T),
        _card("failures", str(len(failures)), bad=bool(failures)),
        _card("mean residual", f"{mean_resid:.2f} px"),
        _card("time per frame", f"{float(np.mean(res.seconds[done])):.2f} s" if done.any() else "–"),
        _card("views", str(len(res.view_names))),
    ]
    if acc_rows:
        last = acc_rows[-1][1]
        cards += [_card("MPJPE", f"{last['MPJPE']:.1f} mm"), _card("PVE", f"{last['PVE']:.1f} mm")]
    if validation:
        worse = validation.get("worse") or []
        text = {"improved": "improved", "worse": "WORSE", "mixed": "mixed", "unchanged": "no change"}
        verdict = text.get(validation.get("verdict"), "–") + (f" ({', '.join(worse)})" if worse else "")
        cards.append(_card("cross-validation", verdict, bad=bool(worse)))

    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>mvcap report: {html.escape(run_name)}</title><style>{_CSS}</style></head><body>",
        f"<header><h1>mvcap run <code>{html.escape(run_name)}</code></h1>",
        f"<p>{html.escape(str(session_path))} · {T} frames · {len(rig)} views ({html.escape(', '.join(rig.names))})"
        f" · subject {html.escape(subject.name) if subject else '–'} · generated "
        f"{_dt.datetime.now().strftime('%Y-%m-%d %H:%M')}</p></header><main>",
        f"<section id='summary'><h2>Summary</h2><div class='cards'>{''.join(cards)}</div>",
    ]
    if failures:
        parts.append("<h3>Failures</h3><ul>" + "".join(f"<li>{html.escape(str(f))}</li>" for f in failures) + "</ul>")
    if summary:
        parts.append(
            "<details><summary>Pipeline details</summary><pre>"
            + html.escape(json.dumps(summary, indent=2, default=str))
            + "</pre></details>"
        )
    parts.append("</section>")

    if acc_rows:
        keys = ["MPJPE", "PA-MPJPE", "PVE", "PA-PVE"]
        head = "".join(f"<th>{k} (mm)</th>" for k in keys)
        body = "".join(
            "<tr><td>" + html.escape(n) + "</td>" + "".join(f"<td>{m[k]:.1f}</td>" for k in keys) + "</tr>"
            for n, m in acc_rows
        )
        parts.append(
            f"<section id='accuracy'><h2>Accuracy against ground truth ({t_done.size} frames)</h2>"
            f"<table><tr><th>estimate</th>{head}</tr>{body}</table></section>"
        )
    if validation:
        parts.append(_validation_section(validation))
    if plots:
        parts.append("<section id='plots'><h2>Per-frame plots</h2>")
        parts += [_figure(u, n, n) for n, u in plots]
        parts.append("</section>")
    if overlays:
        arrows = f"; arrows: the {cfg.arrows} displacement field on the initial estimate" if cfg.arrows else ""
        parts.append(
            f"<section id='overlays'><h2>Overlays: initial estimate (left) and refined body (right){arrows}</h2>"
        )
        for t, imgs in overlays:
            parts.append(f"<h3>frame {t}</h3><div class='grid'>")
            parts += [_figure(u, f"{n} frame {t}", n) for n, u in imgs]
            parts.append("</div>")
        parts.append("</section>")
    if turntables:
        parts.append("<section id='turntable'><h2>Turntable of the fitted body</h2><div class='grid'>")
        parts += [_figure(u, f"turntable frame {t}", f"frame {t}") for t, u in turntables]
        parts.append("</div></section>")
    parts.append(
        "<section id='config'><h2>Run configuration</h2><pre>"
        + html.escape(json.dumps(res.config, indent=2, default=str))
        + "</pre></section>"
    )
    parts.append("</main></body></html>")

    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    tmp.write_text("".join(parts), encoding="utf-8")
    tmp.replace(out_path)
    return out_path
