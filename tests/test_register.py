"""Subject registration round trips on synthetic captures with a known shape and texture."""

import shutil

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import CONFIGS

from mvcap.capture import Session
from mvcap.cli import main
from mvcap.motions import PerturbConfig, perturb_like_regressor
from mvcap.poses import SMPL_PARENTS
from mvcap.register import (
    RegisterConfig,
    RegisterError,
    ShapeFitConfig,
    TextureConfig,
    _median_observations,
    build_appearance,
    fit_shape,
    register_subject,
    rest_pose_pve_mm,
    uv_texel_faces,
)
from mvcap.render import rasterize, render_passes, undistort_images
from mvcap.subject import Subject
from mvcap.synth import generate_session, load_scene_config, make_texture

# a regressor-like start at the mean shape: ~80 mm posed vertex error on this capture
MILD = PerturbConfig(joint_deg=(2.0, 6.0), global_deg=3.0, transl_std_m=0.02)


@pytest.fixture(scope="module")
def capture(tmp_path_factory, body_model):
    """6 frames x 4 views at 256 px of a subject turning on the spot whose shape is far from the mean
    (60 mm rest-pose vertex error), with person masks (the true silhouettes) and initial estimates
    at the mean shape."""
    cfg = load_scene_config(
        CONFIGS / "bench" / "tiny.toml",
        ["seed=5", "frames_per_subject=6", "motion=turn", "fps=10.0", "rig.image_size=[256, 256]"],
    )
    path = generate_session(tmp_path_factory.mktemp("reg") / "turn.h5", cfg, body_model, progress=False)
    with Session.open(path, "a") as s:
        gt = s.read_ground_truth()
        masks = s.read_ground_truth_extras()["masks"]
        pose, transl, betas = perturb_like_regressor(
            np.random.default_rng(1), gt.pose_rotvecs, gt.transl, np.zeros_like(gt.betas), SMPL_PARENTS, MILD
        )
        s.write_init(pose, betas, transl)
        no_keypoints = np.zeros((s.num_views, 24, 3), np.float32)  # confidence 0: masks only
        for t in range(s.num_frames):
            s.write_detections(t, no_keypoints, masks=masks[t], keypoint_format="smpl_24")
    return path


def _photo_errors(path, model, frames, texture):
    """Mean |rendered albedo - photo| (8-bit levels) inside the true silhouettes at the true poses, for
    ``texture`` and for the best flat colour (the photos' median), in the undistorted pinhole image."""
    with Session.open(path) as s:
        gt = s.read_ground_truth()[frames]
        rig = s.rig
        photos = [undistort_images(rig, s.read_frame(int(t))).astype(np.float32) for t in frames]
    with torch.no_grad():
        verts = model(*(torch.as_tensor(x) for x in (gt.pose_rotvecs, gt.betas, gt.transl))).vertices
    frags = [rasterize(rig, v, model.faces) for v in verts]
    inner = [
        np.stack([cv2.erode(m.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0 for m in f.mask.numpy()]) for f in frags
    ]
    flat_colour = np.median(np.concatenate([p[m] for p, m in zip(photos, inner, strict=True)]), 0)
    flat = np.broadcast_to(flat_colour.round().astype(np.uint8), texture.shape).copy()
    errs = []
    for tex in (texture, flat):
        e = []
        for f, v, p, m in zip(frags, verts, photos, inner, strict=True):
            rp = render_passes(
                f, rig, v, model.faces, texture=tex, uvs=model.uvs, uv_faces=model.uv_faces, passes=("albedo",)
            )
            e.append(np.abs(rp.images.numpy() * 255 - p)[m].mean())
        errs.append(float(np.mean(e)))
    return errs


def _corr(a, b, mask) -> float:
    """Pearson correlation of two textures' luminance over ``mask`` texels."""
    lum = np.array([0.299, 0.587, 0.114], np.float32)
    return float(np.corrcoef((a.astype(np.float32) @ lum)[mask], (b.astype(np.float32) @ lum)[mask])[0, 1])


def test_register_recovers_shape_and_texture(capture, body_model, tmp_path):
    with Session.open(capture) as s:
        gt_betas = s.read_ground_truth().betas[0]
        gt_texture = s.subject.texture
    cfg = RegisterConfig(num_frames=4, shape=ShapeFitConfig(rounds=6, iterations=8), texture=TextureConfig(size=128))
    res = register_subject(capture, "sam", cfg, out=tmp_path / "sam.npz", model=body_model, progress=False)
    np.testing.assert_array_equal(res.frames, [0, 2, 3, 5])
    # shape: rest-pose vertex error after aligning the root, against the mean shape it started from
    pve0 = rest_pose_pve_mm(body_model, np.zeros(10), gt_betas)
    pve = rest_pose_pve_mm(body_model, res.shape.betas, gt_betas)
    print(
        f"rest-pose PVE: mean shape {pve0:.1f} mm -> registered {pve:.1f} mm; IoU {res.shape.silhouette_iou.mean():.3f}"
    )
    assert pve0 > 50 and pve < 12 and abs(res.shape.betas[0] - gt_betas[0]) < 0.15
    assert res.shape.silhouette_iou.min() > 0.93
    # appearance: re-rendered at the true poses it explains the photos far better than a flat colour
    err_tex, err_flat = _photo_errors(capture, body_model, res.frames, res.appearance.texture)
    print(
        f"photo error: texture {err_tex:.1f}, flat colour {err_flat:.1f} levels; coverage {res.appearance.coverage:.2f}"
    )
    assert err_tex < 0.4 * err_flat
    # and follows the true texture's pattern where it was seen (another subject's texture does not)
    seen = res.appearance.texel_seen
    assert res.appearance.coverage > 0.75 and res.appearance.observations[seen].min() >= 1
    truth = cv2.resize(gt_texture, (128, 128), interpolation=cv2.INTER_AREA)
    other = cv2.resize(
        make_texture(np.random.default_rng(7), body_model, 256), (128, 128), interpolation=cv2.INTER_AREA
    )
    c_rec, c_other = _corr(res.appearance.texture, truth, seen), _corr(other, truth, seen)
    print(f"texture correlation with the truth on seen texels: {c_rec:.2f} (another subject: {c_other:.2f})")
    assert c_rec > 0.6 and c_rec > c_other + 0.4
    # the subject file round-trips and says where it came from
    loaded = Subject.load(tmp_path / "sam.npz")
    assert loaded == res.subject and loaded.name == "sam" and loaded.vertex_colors.shape == (body_model.num_vertices, 3)
    assert loaded.meta["frames"] == [0, 2, 3, 5] and loaded.meta["shape_from"] == "masks"


def test_keypoints_alone_pull_the_pose(capture, body_model):
    """fit_shape with 2D keypoints only (smpl_24: projected true joints): the joints land on them."""
    with Session.open(capture) as s:
        rig, init = s.rig, s.read_init([1, 4])
        joints = torch.as_tensor(s.read_ground_truth_extras()["joints"][[1, 4]], dtype=torch.float32)
    kp_uv = rig.project(joints).numpy()  # (F, V, 24, 2)
    kp = np.concatenate([kp_uv, np.ones(kp_uv.shape[:-1] + (1,), np.float32)], -1)
    before = np.linalg.norm(
        rig.project(body_model(*(torch.as_tensor(x) for x in (init.pose_rotvecs, init.betas, init.transl))).joints)
        .detach()
        .numpy()
        - kp_uv,
        axis=-1,
    ).mean()
    fit = fit_shape(
        body_model, rig, init, keypoints=kp, keypoint_format="smpl_24", cfg=ShapeFitConfig(rounds=2, iterations=15)
    )
    assert np.isnan(fit.silhouette_iou).all()
    assert before > 5 and fit.keypoint_px.max() < 1.0, (before, fit.keypoint_px)


def test_appearance_alone_and_input_errors(tiny_session, body_model, tmp_path):
    # the tiny session has no detections: the shape fit refuses, saying what to run
    with pytest.raises(RegisterError, match=r"needs person masks or 2D keypoints; run `mvcap detect`"):
        register_subject(tiny_session, cfg=RegisterConfig(), model=body_model, progress=False)
    with pytest.raises(RegisterError, match=r"views \['camX'\] are not in the session"):
        register_subject(tiny_session, cfg=RegisterConfig(views=("camX",)), model=body_model, progress=False)
    with pytest.raises(RegisterError, match=r"frames \[7\] cannot be used"):
        register_subject(tiny_session, cfg=RegisterConfig(frames=(0, 7)), model=body_model, progress=False)
    # appearance only: keeps the initial shape (exact in this session)
    cfg = RegisterConfig(shape=ShapeFitConfig(enabled=False), texture=TextureConfig(size=64))
    res = register_subject(tiny_session, cfg=cfg, write_session=True, model=body_model, progress=False)
    with Session.open(tiny_session) as s:
        assert s.subject == res.subject and res.subject.name == "tiny"
        np.testing.assert_allclose(res.subject.betas, s.read_ground_truth().betas[0], atol=1e-6)
    # a session without initial estimates
    bare = tmp_path / "bare.h5"
    with Session.open(tiny_session) as s, Session.create(bare, s.rig, 1) as b:
        b.write_frame(0, s.read_frame(0))
    with pytest.raises(RegisterError, match=r"no usable frame .* initial body estimate"):
        register_subject(bare, cfg=cfg, model=body_model, progress=False)
    with pytest.raises(RegisterError, match=r"images must be uint8 \(F=1, V=4"):
        with Session.open(tiny_session) as s:
            build_appearance(body_model, s.rig, np.zeros((1, 4, 8, 8, 3)), s.read_init([0]))


def test_cli_register(tiny_session, tmp_path):
    runner = CliRunner()
    r = runner.invoke(main, ["register", str(tiny_session)])
    assert r.exit_code == 2 and r.output.startswith("error: the shape fit needs person masks"), r.output
    out = tmp_path / "bob.npz"
    args = ["register", str(tiny_session), "--name", "bob", "--out", str(out), "--write-session", "--frames", "0:2"]
    args += ["--set", "shape.enabled=false", "--set", "texture.size=64"]
    r = runner.invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "subject 'bob' from 2 frames x 4 views" in r.output and "written into the session" in r.output
    assert Subject.load(out).meta["frames"] == [0, 1]
    with Session.open(tiny_session) as s:
        assert s.subject.name == "bob"
    r = runner.invoke(main, args)
    assert r.exit_code == 2 and "already exists" in r.output
    shutil.copy(out, tmp_path / "kept.npz")
    assert runner.invoke(main, args + ["--overwrite"]).exit_code == 0


def test_uv_texels_and_median(body_model):
    # every chart texel's barycentric UV is its own centre (the convention render_passes samples with)
    S = 64
    fid, bary = uv_texel_faces(body_model, S)
    chart = fid >= 0
    assert 0.3 < chart.mean() < 0.95
    uvs, uvf = body_model.uvs.numpy(), body_model.uv_faces.numpy()
    uv = (bary[chart][..., None] * uvs[uvf[fid[chart]]]).sum(1)
    y, x = np.nonzero(chart)
    np.testing.assert_allclose(uv, np.stack([(x + 0.5) / S, 1 - (y + 0.5) / S], -1), atol=1e-5)
    # per-point median over a varying number of observations, in chunks
    rng = np.random.default_rng(0)
    obs = [rng.integers(0, 256, (100, 3), dtype=np.uint8) for _ in range(7)]
    seen = [rng.random(100) < 0.5 for _ in range(7)]
    med, count = _median_observations(obs, seen, chunk=16)
    O, M = np.stack(obs).astype(float), np.stack(seen)
    for q in range(100):
        want = np.median(O[M[:, q], q], 0) if M[:, q].any() else np.full(3, np.nan)
        np.testing.assert_array_equal(med[q], want)
    assert (count == M.sum(0)).all() and (count == 0).any()
