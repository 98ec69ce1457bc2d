"""``mvcap demo``: the whole chain on a small synthetic studio capture, then the report.

1. A synthetic capture with ground truth (``configs/demo/scene.toml``): one subject walking,
   4 cameras, written out like a real one -- per-camera MP4 videos, the rig file, a
   regression-like initial estimate (``init.npz``, what a pose regressor would give; used
   when MediaPipe is not installed), the ground truth (``ground_truth.npz``) and the
   subject's pre-scan (``prescan_subject.npz``).
2. ``mvcap run`` on it (``configs/demo/run.toml``, copied to ``<out>/run.toml``): ingest
   the videos → initial estimates (MediaPipe keypoints + triangulation when the ``detect``
   extra is installed, else ``init.npz``) → subject registration from the capture (needs the
   person masks MediaPipe gives; without it the pre-scan is used) → dense refinement with
   the learned predictor → exports → ``report_demo.html``.
3. Pictures of the rig: ``projection.png`` (the mesh projected with full lens distortion)
   and ``passes.png`` (shaded RGB, depth, normals, template coordinates per view).

Everything is resumable: rerunning ``mvcap demo`` reuses what is already in ``<out>``.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from mvcap.body import load_body_model
from mvcap.cameras import project
from mvcap.resources import resource_path
from mvcap.rigio import load_rig

DEMO_RIG = resource_path("calibration/demo_rig.toml", must_exist=False)


def demo_pose() -> torch.Tensor:
    """A fixed, recognisable pose: (24, 3) rotvecs. Right arm raised forward, left arm
    down, left knee bent, head turned; standing on the floor (world Y up)."""
    pose = torch.zeros(24, 3)
    pose[0] = torch.tensor([0.0, 0.5, 0.0])  # turn towards cam1
    pose[17] = torch.tensor([0.0, 0.0, 0.9])  # right shoulder: arm up
    pose[19] = torch.tensor([0.0, 1.2, 0.0])  # right elbow bent forward
    pose[16] = torch.tensor([0.0, 0.0, 1.1])  # left shoulder: arm down
    pose[1] = torch.tensor([-0.6, 0.0, 0.0])  # left hip flexed
    pose[4] = torch.tensor([0.9, 0.0, 0.0])  # left knee bent
    pose[15] = torch.tensor([0.0, 0.4, 0.0])  # head turned
    return pose


def _label(img: np.ndarray, text: str) -> np.ndarray:
    img = img.copy()
    cv2.putText(img, text, (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 2, cv2.LINE_AA)
    return img


def _to_u8(x: np.ndarray) -> np.ndarray:
    return np.clip(x * 255.0, 0, 255).astype(np.uint8)


def run_demo(
    out_dir: Path, frames: int | None = None, image_size: int | None = None, progress: bool = True, echo=print
):
    """Run the demo chain into ``out_dir`` (see the module docstring); returns the run summary.
    ``frames`` / ``image_size`` shrink the scene (tests)."""
    from mvcap.config import CONFIG_DIR
    from mvcap.detect import mediapipe_available
    from mvcap.pipeline import format_summary, load_run_config, run_pipeline

    out_dir = Path(out_dir)
    capture = out_dir / "capture"
    if not (capture / "prescan_subject.npz").exists():  # written last: a complete capture
        overrides = []
        if frames:
            overrides.append(f"frames_per_subject={int(frames)}")
        if image_size:
            overrides.append(f"rig.image_size=[{int(image_size)},{int(image_size)}]")
        echo(f"[demo] rendering a synthetic studio capture into {capture}")
        write_synthetic_capture(capture, CONFIG_DIR / "demo" / "scene.toml", overrides, progress)
    run_toml = out_dir / "run.toml"
    if not run_toml.exists():
        text = (CONFIG_DIR / "demo" / "run.toml").read_text()
        if not mediapipe_available():
            echo(
                "[demo] MediaPipe is not installed (pip install 'mvcap[detect]'): initial estimates come from "
                "capture/init.npz and the subject from its pre-scan, capture/prescan_subject.npz"
            )
            text = text.replace('file = ""  ', 'file = "capture/prescan_subject.npz"  ', 1)
        run_toml.write_text(text)
    cfg, base = load_run_config(run_toml)
    summary = run_pipeline(cfg, base, out_dir, progress=progress)
    echo(format_summary(summary))
    run_rig_pictures(out_dir)
    if summary.report is not None:
        echo(f"[demo] open {summary.report} in a web browser (rerun with: mvcap run {run_toml})")
    return summary


def write_synthetic_capture(capture: Path, scene_toml: Path, overrides=(), progress: bool = True) -> Path:
    """Render a synthetic session and write it out as a capture folder: ``<camera>.mp4``,
    ``rig.toml``, ``init.npz`` (regression-like initial estimates), ``ground_truth.npz`` and
    ``prescan_subject.npz``, all npz files with AMASS-style keys (poses (T, 72), trans, betas)."""
    from mvcap.capture import Session
    from mvcap.ingest import export_frames
    from mvcap.synth import generate_session, load_scene_config

    capture = Path(capture)
    capture.mkdir(parents=True, exist_ok=True)
    cfg = load_scene_config(scene_toml, list(overrides))
    studio = capture / "_studio.h5"
    generate_session(studio, cfg, load_body_model(), progress=progress)
    export_frames(studio, capture, format="mp4", progress=progress)
    with Session.open(studio) as s:
        for name, params in (("init", s.read_init()), ("ground_truth", s.read_ground_truth())):
            np.savez(
                capture / f"{name}.npz",
                poses=params.pose_rotvecs.reshape(len(params), -1),
                trans=params.transl,
                betas=params.betas[0],
                mocap_framerate=s.fps,
            )
        s.subject.save(capture / "prescan_subject.npz")
    studio.unlink()
    return capture


def run_rig_pictures(out_dir: Path, rig_path: Path | None = None) -> list[Path]:
    """The embedded body, posed, seen by every camera of a rig (default the demo rig)."""
    from mvcap.render import render

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rig = load_rig(rig_path or DEMO_RIG)
    model = load_body_model()
    with torch.no_grad():
        body = model(demo_pose()[None], torch.zeros(1, model.num_betas), torch.zeros(1, 3))
        verts = body.vertices[0]
        verts = verts - torch.tensor([0.0, float(verts[:, 1].min()), 0.0])  # stand on the floor

    # 1. projection with lens distortion: mesh edges drawn over a neutral backdrop
    uv = project(rig, verts.double()).numpy()  # (V, N, 2)
    faces = model.faces.numpy()
    tiles = []
    for v, cam in enumerate(rig):
        img = np.full((cam.height, cam.width, 3), 40, np.uint8)
        pts = np.round(uv[v][faces] * 4).astype(np.int32)  # 2 bits of sub-pixel precision
        cv2.polylines(img, list(pts), True, (90, 200, 255), 1, cv2.LINE_AA, shift=2)
        tiles.append(_label(img, f"{cam.name}: projected mesh"))
    proj_path = out_dir / "projection.png"
    cv2.imwrite(str(proj_path), cv2.cvtColor(np.concatenate(tiles, axis=1), cv2.COLOR_RGB2BGR))

    # 2. render passes in the undistorted pinhole image of each camera
    pinhole = rig.without_distortion()
    template = model.template_vertices()[0]
    _, passes = render(
        pinhole, verts, model.faces, template_vertices=template, passes=("rgb", "depth", "normal", "template", "mask")
    )
    rgb = passes.get("rgb").numpy()
    depth = passes.get("depth").numpy()[..., 0]
    normal = passes.get("normal").numpy()
    tmpl = passes.get("template").numpy()
    mask = passes.get("mask").numpy()[..., 0] > 0
    rows = []
    lo, hi = template.min(0).values.numpy(), template.max(0).values.numpy()
    for v, cam in enumerate(rig):
        d = depth[v]
        dn = np.zeros_like(d)
        if mask[v].any():
            dmin, dmax = d[mask[v]].min(), d[mask[v]].max()
            dn = np.where(mask[v], 1.0 - 0.8 * (d - dmin) / max(dmax - dmin, 1e-6), 0.0)
        depth_img = cv2.applyColorMap(_to_u8(dn), cv2.COLORMAP_VIRIDIS)[..., ::-1] * mask[v][..., None]
        normal_img = _to_u8((normal[v] * [1, -1, -1] + 1) / 2) * mask[v][..., None]
        tmpl_img = _to_u8((tmpl[v] - lo) / (hi - lo)) * mask[v][..., None]
        rows.append(
            np.concatenate(
                [
                    _label(_to_u8(rgb[v]), f"{cam.name} rgb"),
                    _label(depth_img.astype(np.uint8), "depth"),
                    _label(normal_img, "normals"),
                    _label(tmpl_img, "template coords"),
                ],
                axis=1,
            )
        )
    passes_path = out_dir / "passes.png"
    cv2.imwrite(str(passes_path), cv2.cvtColor(np.concatenate(rows, axis=0), cv2.COLOR_RGB2BGR))
    return [proj_path, passes_path]
