"""Robust triangulation: round trips on synthetic MediaPipe-like detections with ground truth."""

import numpy as np
import pytest
import roma
import torch

from mvcap.config import ConfigError
from mvcap.detect import FLIP_INDEX, LEFT_RIGHT_PAIRS, MEDIAPIPE_POSE_33
from mvcap.triangulate import (
    TriangulateConfig,
    TriangulateError,
    dlt,
    match_swaps,
    mirrored_frames,
    normalized_points,
    triangulate_keypoints,
)


def make_scene(body_model, seed=0, T=4, V=6, size=512):
    """GT keypoints of posed bodies, a ring rig with distortion, and the body's facing per view."""
    from mvcap.initialize import mediapipe_keypoint_definition
    from mvcap.motions import place_on_floor, sample_poses
    from mvcap.synth import RigConfig, make_ring_rig

    rng = np.random.default_rng(seed)
    rig = make_ring_rig(RigConfig(num_cameras=V, image_size=(size, size)), rng)
    pose = sample_poses(rng, T)
    yaw = torch.zeros(T, 3, dtype=torch.float64)
    yaw[:, 1] = torch.as_tensor(rng.uniform(-np.pi, np.pi, T))  # any heading
    pose[:, 0] = roma.rotmat_to_rotvec(roma.rotvec_to_rotmat(yaw) @ roma.rotvec_to_rotmat(torch.tensor(pose[:, 0])))
    transl = place_on_floor(body_model, pose, np.zeros(10), np.zeros((T, 3)))
    definition = mediapipe_keypoint_definition(body_model)
    with torch.no_grad():
        out = body_model(torch.tensor(pose, dtype=torch.float32), None, torch.tensor(transl, dtype=torch.float32))
        kp3 = definition.evaluate(out.joints.double(), out.vertices.double()).numpy()
    forward = roma.rotvec_to_rotmat(torch.tensor(pose[:, 0])).numpy()[:, :, 2]  # body +Z in the world
    centres = np.stack([c.center_world for c in rig])
    facing = np.einsum("tc,tvc->tv", forward, centres[None] - out.joints[:, 0].numpy()[:, None])
    return dict(rig=rig, pose=pose, transl=transl, kp3=kp3, definition=definition, facing=facing, out=out, rng=rng)


def corrupt(scene, noise_px=0.5, drop=0.1, outlier_view=0, outlier_frac=0.3):
    """Detections: distorted projections + noise, random drops, one view with gross outliers,
    and left/right swapped in the view that sees each frame's body most from behind."""
    rig, kp3, rng, d = scene["rig"], scene["kp3"], scene["rng"], scene["definition"]
    uv = rig.project(torch.tensor(kp3)).numpy()  # (T, V, K, 2) distorted pixels
    T, V, K, _ = uv.shape
    kp = np.concatenate([uv + rng.normal(0, noise_px, uv.shape), rng.uniform(0.6, 1.0, (T, V, K, 1))], -1)
    kp[..., ~d.defined, 2] = 0.0
    dropped = rng.random((T, V, K)) < drop
    kp[dropped] = (np.nan, np.nan, 0.0)
    outliers = (rng.random((T, K)) < outlier_frac) & d.defined & ~dropped[:, outlier_view]
    n = int(outliers.sum())
    kp[:, outlier_view, :, :2][outliers] += rng.uniform(25, 80, (n, 2)) * rng.choice([-1, 1], (n, 2))
    swapped = np.zeros((T, V), bool)
    for t in range(T):
        order = [v for v in np.argsort(scene["facing"][t]) if v != outlier_view]
        v = order[0]  # the most back-facing view (not the one with outliers)
        kp[t, v] = kp[t, v][FLIP_INDEX]
        swapped[t, v] = True
    return kp, swapped, outliers


@pytest.fixture(scope="module")
def scene(body_model):
    return make_scene(body_model)


def test_flip_index_is_an_involution_over_left_right_pairs():
    assert len(LEFT_RIGHT_PAIRS) == 16
    assert np.array_equal(FLIP_INDEX[FLIP_INDEX], np.arange(33))
    for a, b in LEFT_RIGHT_PAIRS:
        assert MEDIAPIPE_POSE_33[a].replace("left", "right") == MEDIAPIPE_POSE_33[b]
    assert FLIP_INDEX[0] == 0  # the nose stays


def test_dlt_exact_with_lens_distortion(scene):
    rig, kp3 = scene["rig"], scene["kp3"]
    assert np.abs(np.stack([c.dist for c in rig])).max() > 0.01  # the rig really is distorted
    uv = rig.project(torch.tensor(kp3)).numpy()  # (T, V, K, 2)
    xy = normalized_points(rig, uv)  # (T, V, K, 2)
    Rt = np.stack([np.concatenate([c.R_world2cam, c.t_world2cam[:, None]], 1) for c in rig])
    xy = np.moveaxis(xy, 1, 2)  # (T, K, V, 2): one point per row, its views last
    X = dlt(Rt, xy, np.ones(xy.shape[:-1]))
    assert np.abs(X - kp3).max() < 1e-6


def test_round_trip_with_noise_drops_outliers_and_swaps(scene):
    kp, swapped_gt, outliers = corrupt(scene)
    tri = triangulate_keypoints(scene["rig"], kp, TriangulateConfig())
    d = scene["definition"]
    # every swapped view found, no false swaps
    np.testing.assert_array_equal(tri.swapped, swapped_gt)
    # the swap was undone in the returned detections
    t, v = np.argwhere(swapped_gt)[0]
    assert np.allclose(tri.keypoints[t, v], kp[t, v][FLIP_INDEX], equal_nan=True)
    # gross outliers of the corrupted view are not inliers
    assert (~tri.inliers[:, 0][outliers]).all()
    err_mm = 1000 * np.linalg.norm(tri.points_world - scene["kp3"], axis=-1)[:, d.defined]
    assert np.isfinite(err_mm).all()
    med, p95 = np.median(err_mm), np.percentile(err_mm, 95)
    print(f"\ntriangulation error, 0.5 px noise, 512 px, 6 views: median {med:.2f} mm, p95 {p95:.2f} mm")
    assert med < 4.0 and p95 < 10.0
    assert np.nanmax(tri.reprojection_px) < 3.0  # inliers agree to a few pixels
    assert (tri.num_inliers[:, d.defined] >= 3).all()
    assert (tri.confidence[:, d.defined] > 0.5).all()
    # undefined landmarks had no detections: not triangulated
    assert not tri.valid[:, ~d.defined].any()


def test_without_swap_fix_the_swapped_view_is_only_rejected_pointwise(scene):
    kp, swapped_gt, _ = corrupt(scene)
    tri = triangulate_keypoints(scene["rig"], kp, TriangulateConfig(fix_swaps=False))
    assert not tri.swapped.any()
    t, v = np.argwhere(swapped_gt)[0]
    shoulders = [MEDIAPIPE_POSE_33.index("left_shoulder"), MEDIAPIPE_POSE_33.index("right_shoulder")]
    assert not tri.inliers[t, v, shoulders].any()  # swapped shoulders disagree with the other views


def test_two_views_triangulate_without_swap_handling(scene):
    rig = scene["rig"].subset(scene["rig"].names[:2])
    uv = rig.project(torch.tensor(scene["kp3"])).numpy()
    kp = np.concatenate([uv, np.ones(uv.shape[:-1] + (1,))], -1)
    tri = triangulate_keypoints(rig, kp)
    d = scene["definition"]
    assert np.abs(tri.points_world[:, d.defined] - scene["kp3"][:, d.defined]).max() < 1e-6
    assert not tri.swapped.any()


def test_too_few_views_give_nan(scene):
    kp, _, _ = corrupt(scene, drop=0.0, outlier_frac=0.0)
    kp[:, 1:, 0, 2] = 0.0  # the nose only in view 0
    tri = triangulate_keypoints(scene["rig"], kp)
    assert not tri.valid[:, 0].any() and (tri.num_inliers[:, 0] == 0).all()
    assert np.isnan(tri.reprojection_px[:, 0]).all()


def test_bad_inputs_have_clear_messages(scene):
    rig = scene["rig"]
    with pytest.raises(TriangulateError, match=r"add a frame axis"):
        triangulate_keypoints(rig, np.zeros((6, 33, 3)))
    with pytest.raises(TriangulateError, match=r"\(T, V=6, K, 3\)"):
        triangulate_keypoints(rig, np.zeros((2, 5, 33, 3)))
    with pytest.raises(TriangulateError, match="involution"):
        triangulate_keypoints(rig, np.zeros((1, 6, 4, 3)), flip_index=[1, 2, 3, 0])
    with pytest.raises(TriangulateError, match="names must name the K=33"):
        triangulate_keypoints(rig, np.zeros((1, 6, 33, 3)), names=MEDIAPIPE_POSE_33[:-1])
    with pytest.raises(ConfigError, match="min_views"):
        TriangulateConfig(min_views=1)


def test_true_skeletons_face_forward_and_mirrored_ones_are_found(body_model):
    """Over 300 sampled poses with 2 cm of noise: no true skeleton is called mirrored, and
    nearly every mirrored one is found (a turned head or feet can leave a vote undecided)."""
    from mvcap.initialize import mediapipe_keypoint_definition
    from mvcap.motions import sample_poses

    rng = np.random.default_rng(3)
    pose = sample_poses(rng, 300)
    definition = mediapipe_keypoint_definition(body_model)
    with torch.no_grad():
        out = body_model(torch.tensor(pose, dtype=torch.float32), None, torch.zeros(len(pose), 3))
        kp3 = definition.evaluate(out.joints.double(), out.vertices.double()).numpy()
    kp3[:, ~definition.defined] = np.nan
    kp3 += rng.normal(0, 0.02, kp3.shape)
    assert not mirrored_frames(kp3, MEDIAPIPE_POSE_33).any()
    assert mirrored_frames(kp3[:, FLIP_INDEX], MEDIAPIPE_POSE_33).mean() > 0.9
    torso = [MEDIAPIPE_POSE_33.index(n) for n in ("left_hip", "right_hip", "left_shoulder", "right_shoulder")]
    kp3[:, torso] = np.nan
    assert not mirrored_frames(kp3[:, FLIP_INDEX], MEDIAPIPE_POSE_33).any()  # nothing says which way


def _detections(scene, swap):
    """Noisy detections (T, V, K, 3) with left and right exchanged in the (T, V) views ``swap``."""
    uv = scene["rig"].project(torch.tensor(scene["kp3"])).numpy()
    rng = np.random.default_rng(1)
    kp = np.concatenate([uv + rng.normal(0, 0.5, uv.shape), np.full(uv.shape[:-1] + (1,), 0.9)], -1)
    kp[..., ~scene["definition"].defined, 2] = 0.0
    kp[swap] = kp[swap][:, FLIP_INDEX]
    return kp


def test_most_views_swapped_a_mirrored_skeleton_is_exchanged_back(scene):
    """4 of 6 views swapped (those that see the body most from behind): swap handling alone
    makes the 2 right views agree with them, and the skeleton is a mirror image."""
    swap = np.zeros(scene["facing"].shape, bool)
    for t, facing in enumerate(scene["facing"]):
        swap[t, np.argsort(facing)[:4]] = True
    kp = _detections(scene, swap)
    defined = scene["definition"].defined
    mirrored = triangulate_keypoints(scene["rig"], kp, TriangulateConfig(fix_mirror=False))
    assert np.array_equal(mirrored.swapped, ~swap)  # the two right views were "corrected"
    err = np.linalg.norm(mirrored.points_world[:, FLIP_INDEX] - scene["kp3"], axis=-1)[:, defined]
    assert err.max() < 0.01  # a consistent mirror image of the truth
    tri = triangulate_keypoints(scene["rig"], kp)
    assert np.array_equal(tri.swapped, swap)
    assert np.linalg.norm(tri.points_world - scene["kp3"], axis=-1)[:, defined].max() < 0.01
    assert np.allclose(tri.keypoints, kp[:, :, FLIP_INDEX] * swap[..., None, None] + kp * ~swap[..., None, None])


def test_match_swaps_finds_a_held_out_view_swapped_against_the_others(scene):
    swap = np.zeros(scene["facing"].shape, bool)
    swap[np.arange(len(swap)), np.argmin(scene["facing"], 1)] = True
    kp = _detections(scene, swap)
    rig = scene["rig"]
    for v in range(len(rig)):
        others = [u for u in range(len(rig)) if u != v]
        tri = triangulate_keypoints(rig.subset([rig.names[u] for u in others]), kp[:, others])
        found, fixed = match_swaps(rig.subset([rig.names[v]]), kp[:, v], tri.points_world)
        assert np.array_equal(found, swap[:, v])
        assert np.allclose(fixed, _detections(scene, np.zeros_like(swap))[:, v])
    off = match_swaps(rig.subset([rig.names[0]]), kp[:, 0], tri.points_world, TriangulateConfig(fix_swaps=False))[0]
    assert not off.any()
    with pytest.raises(TriangulateError, match="one camera"):
        match_swaps(rig, kp[:, 0], tri.points_world)
