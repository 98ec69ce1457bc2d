"""Board calibration: synthetic ChArUco / checkerboard round trips, world alignment, outputs,
and bad input (each with a clear message and no output left behind)."""

import json
import math

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from mvcap.calibrate import (
    Board,
    CalibrateConfig,
    CalibrationError,
    LensIntrinsics,
    align_to_board,
    calibrate,
    compare_rigs,
    format_report,
    iter_frames,
    list_boards,
    load_board,
    load_intrinsics,
    resolve_sources,
    world_from_floor_board,
    write_outputs,
)
from mvcap.cameras import Camera, Rig
from mvcap.cli import main
from mvcap.rigio import load_rig, save_rig
from mvcap.synth_board import BoardCaptureConfig, generate_board_capture

FLOOR_FRAME = 2
NUM_FRAMES = 96


def _M(cam) -> np.ndarray:
    M = np.eye(4)
    M[:3, :3], M[:3, 3] = cam.R_world2cam, cam.t_world2cam
    return M


def _angle_deg(Ra, Rb) -> float:
    return math.degrees(math.acos(np.clip((np.trace(Ra.T @ Rb) - 1) / 2, -1, 1)))


def _relative_errors(gt: Rig, est: Rig):
    """Per camera i > 0: rotation (deg) and translation (mm) error of the pose relative to camera 0."""
    out = []
    for i in range(1, len(gt)):
        Rg = _M(gt[i]) @ np.linalg.inv(_M(gt[0]))
        Re = _M(est[i]) @ np.linalg.inv(_M(est[0]))
        out.append((_angle_deg(Rg[:3, :3], Re[:3, :3]), 1000 * np.linalg.norm(Rg[:3, 3] - Re[:3, 3])))
    return np.array(out)


# ------------------------------------------------------------------------------------------
# synthetic ChArUco capture (4-camera ring, off-centre principal points, k1/k2 + p1/p2)
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def charuco_capture(tmp_path_factory):
    # 4-camera ring, 640x480 mp4, the 7 x 10 ChArUco board; seed 0 (the default)
    cfg = BoardCaptureConfig(num_frames=NUM_FRAMES, floor_frame=FLOOR_FRAME, seed=0)
    return generate_board_capture(tmp_path_factory.mktemp("charuco"), cfg, progress=False)


@pytest.fixture(scope="module")
def charuco_result(charuco_capture):
    cfg = CalibrateConfig(board="charuco_7x10", world_frame=FLOOR_FRAME, up="y")
    return calibrate(charuco_capture.sources, cfg, progress=False)


def test_synthetic_videos_read_back(charuco_capture):
    for path in charuco_capture.sources.values():
        assert path.suffix == ".mp4"
        frames = list(iter_frames(path))
        assert len(frames) == NUM_FRAMES and frames[-1][1].shape == (480, 640)


def test_charuco_round_trip_accuracy(charuco_capture, charuco_result):
    gt, est = charuco_capture.rig, charuco_result.rig
    assert est.names == gt.names
    for g, e in zip(gt, est):
        assert abs(g.K[0, 2] - (g.width - 1) / 2) > 1 or abs(g.K[1, 2] - (g.height - 1) / 2) > 1  # off-centre
        # focal lengths within 0.5 %, principal point within 3 px
        assert abs(e.K[0, 0] / g.K[0, 0] - 1) < 0.005 and abs(e.K[1, 1] / g.K[1, 1] - 1) < 0.005, e.name
        assert np.abs(e.K[:2, 2] - g.K[:2, 2]).max() < 3.0, e.name
        # the lens model: distorted positions of a grid of rays agree within 0.5 px
        xy = np.stack(np.meshgrid(np.linspace(-0.5, 0.5, 7), np.linspace(-0.4, 0.4, 5)), -1).reshape(-1, 2)
        pts = np.concatenate([xy, np.ones((len(xy), 1))], 1)
        pg, _ = cv2.projectPoints(pts, np.zeros(3), np.zeros(3), g.K, g.dist)
        pe, _ = cv2.projectPoints(pts, np.zeros(3), np.zeros(3), e.K, e.dist)
        assert np.abs(pg - pe).max() < 3.5  # includes the principal-point error
    rel = _relative_errors(gt, est)
    # relative poses w.r.t. camera 0: rotations within 0.1 deg, translations within 5 mm
    assert rel[:, 0].max() < 0.1, rel
    assert rel[:, 1].max() < 5.0, rel
    for rep in charuco_result.cameras:
        assert rep.frames_intrinsics >= 10 and rep.frames_extrinsics >= 5
        assert rep.rig_error_px[0] < 0.2 and rep.intrinsic_error_px[0] < 0.2


def test_world_alignment_puts_the_floor_board_at_y0(charuco_capture, charuco_result):
    # expected: the ground-truth rig seen from the floor board of frame FLOOR_FRAME
    expected = align_to_board(charuco_capture.rig, charuco_capture.board2world[FLOOR_FRAME], "y")
    for g, e in zip(expected, charuco_result.rig):
        assert _angle_deg(g.R_world2cam, e.R_world2cam) < 0.25, e.name
        assert np.linalg.norm(g.center_world - e.center_world) < 0.01, e.name
        assert e.center_world[1] > 1.0  # cameras stand 1.2-1.8 m above the floor
    k = int(np.flatnonzero(charuco_result.frames == FLOOR_FRAME)[0])
    board = load_board("charuco_7x10")
    corners = board.corners_board @ charuco_result.board2world[k, :3, :3].T + charuco_result.board2world[k, :3, 3]
    assert np.abs(corners[:, 1]).max() < 1e-9  # the floor board defines y = 0
    assert "floor" in charuco_result.world


def test_align_to_board_up_axes():
    rng = np.random.default_rng(3)
    R, _ = cv2.Rodrigues(rng.normal(size=3))
    b2w = np.eye(4)
    b2w[:3, :3], b2w[:3, 3] = R, rng.normal(size=3)
    cam_R, _ = cv2.Rodrigues(rng.normal(size=3))
    centre = b2w[:3, 3] - 2.0 * R[:, 2]  # 2 m in front of the printed face (board z points away)
    rig = Rig((Camera("c", np.diag([500.0, 500.0, 1.0]), np.zeros(5), cam_R, -cam_R @ centre, (64, 48)),))
    pts_b = np.array([[0.0, 0, 0], [0.3, 0, 0], [0, 0.2, 0], [0.3, 0.2, 0]])
    pts_w = pts_b @ R.T + b2w[:3, 3]
    for up, axis in (("y", 1), ("z", 2)):
        A = world_from_floor_board(b2w, up)
        new = pts_w @ A[:3, :3].T + A[:3, 3]
        assert np.abs(new[:, axis]).max() < 1e-12  # board plane = floor
        np.testing.assert_allclose(new[1] - new[0], [0.3, 0, 0], atol=1e-12)  # board x = world X
        aligned = align_to_board(rig, b2w, up)
        np.testing.assert_allclose(aligned[0].center_world[axis], 2.0, atol=1e-9)  # above the floor
        # the camera sees the same points before and after
        p_old = (cam_R @ pts_w.T).T + rig[0].t_world2cam
        p_new = (aligned[0].R_world2cam @ new.T).T + aligned[0].t_world2cam
        np.testing.assert_allclose(p_old, p_new, atol=1e-9)


def test_outputs_and_report(charuco_result, tmp_path):
    rig_path, rep_dir = tmp_path / "out" / "rig.toml", tmp_path / "report"
    written = write_outputs(charuco_result, rig_path, rep_dir)
    assert rig_path in written and rig_path.exists()
    back = load_rig(rig_path)
    for a, b in zip(back, charuco_result.rig):
        np.testing.assert_allclose(a.K, b.K, rtol=1e-9)
        np.testing.assert_allclose(a.R_world2cam, b.R_world2cam, atol=1e-9)
    data = json.loads((rep_dir / "report.json").read_text())
    assert [c["camera"] for c in data["cameras"]] == list(charuco_result.rig.names)
    for c in data["cameras"]:
        assert c["frames_read"] == NUM_FRAMES and c["frames_intrinsics"] >= 10
        assert len(c["intrinsic_error_px"]) == 2 and len(c["rig_error_px"]) == 2
        img = cv2.imread(c["picture"])
        assert img is not None and img.shape[:2] == (480, 640)
    table = format_report(charuco_result)
    assert all(n in table for n in charuco_result.rig.names) and "rig err px" in table
    assert (rep_dir / "report.md").read_text().count("![") == 4
    assert not list(tmp_path.rglob(".*tmp*"))  # no temporary files left


# ------------------------------------------------------------------------------------------
# checkerboard, through the CLI, with image folders
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checker_capture(tmp_path_factory):
    cfg = BoardCaptureConfig(
        board="checkerboard_10x7",
        num_frames=32,
        shared_every=2,
        distance_m=(0.7, 1.3),
        image_margin=0.3,
        format="png",
        seed=5,
    )
    return generate_board_capture(tmp_path_factory.mktemp("checker"), cfg, progress=False)


def test_checkerboard_orientation_is_the_boards_own():
    board = load_board("checkerboard_10x7")
    tex, px = board.texture(24, 1.0)
    m = 1.0 * board.square_length
    for quarter in range(4):
        # rotate the printed board in the image by quarter turns (plus a slight perspective)
        h, w = tex.shape
        c, s = math.cos(quarter * math.pi / 2), math.sin(quarter * math.pi / 2)
        A = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
        T = (
            np.array([[1, 0, 400], [0, 1, 300], [0, 0, 1.0]])
            @ A
            @ np.array([[1, 0, -w / 2], [0, 1, -h / 2], [0, 0, 1]])
        )
        T = np.array([[1, 0.05, 0], [0.02, 1, 0], [2e-5, 1e-5, 1]]) @ T
        img = cv2.warpPerspective(tex, T, (800, 600), flags=cv2.INTER_LINEAR, borderValue=128)
        ids, uv = board.detect(img)
        assert len(ids) == board.num_corners, quarter
        tex_uv = (board.corners_board[ids, :2] + m) / px - 0.5
        expect = cv2.perspectiveTransform(tex_uv.reshape(-1, 1, 2), T).reshape(-1, 2)
        assert np.abs(uv - expect).max() < 0.3, quarter


def test_checkerboard_path_through_cli(checker_capture, tmp_path):
    src = checker_capture.sources
    out = tmp_path / "rig.toml"
    gt = checker_capture.rig.subset(["cam00", "cam01"])
    gt_path = tmp_path / "gt" / "rig_gt.toml"
    gt_path.parent.mkdir()
    save_rig(gt, gt_path)
    args = ["calibrate", f"cam00={src['cam00']}", f"cam01={src['cam01']}", "--board", "checkerboard_10x7"]
    args += ["--out", str(out), "--set", "min_frames=8", "--compare", str(gt_path), "--quiet"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "| cam00 |" in res.output and "| cam01 |" in res.output and "rel. rotation deg" in res.output
    assert (tmp_path / "rig_report" / "cam01.png").exists()
    est = load_rig(out)
    for g, e in zip(gt, est):
        assert abs(e.K[0, 0] / g.K[0, 0] - 1) < 0.01 and np.abs(e.K[:2, 2] - g.K[:2, 2]).max() < 3.0
    rel = _relative_errors(gt, est)
    # few shared frames (about 6) in this small capture: looser than the ChArUco round trip
    assert rel[0, 0] < 0.5 and rel[0, 1] < 10.0, rel


def test_intrinsics_from_photos_held_in_the_rig_calibration(checker_capture, tmp_path):
    """--intrinsics-only on one camera, then the rig with that lens held (--intrinsics)."""
    src = checker_capture.sources
    lens = tmp_path / "lens.toml"
    fast = ["--set", "checkerboard_fallback=never"]  # the classic detector costs ~0.3 s per frame missed
    args = ["calibrate", f"cam00={src['cam00']}", "--board", "checkerboard_10x7", "--intrinsics-only"]
    res = CliRunner().invoke(main, args + ["--out", str(lens), "--quiet"] + fast)
    assert res.exit_code == 0, res.output
    out = tmp_path / "rig.toml"
    args = ["calibrate", f"cam00={src['cam00']}", f"cam01={src['cam01']}", "--board", "checkerboard_10x7"]
    args += ["--intrinsics", str(lens), "--out", str(out), "--set", "min_frames=8", "--quiet"] + fast
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "| given |" in res.output  # cam00's lens was held, cam01's fitted
    est, held = load_rig(out), load_intrinsics(lens)["cam00"]
    np.testing.assert_array_equal(est[0].K, held.K)
    np.testing.assert_array_equal(est[0].dist, held.dist)
    gt = checker_capture.rig.subset(["cam00", "cam01"])
    rel = _relative_errors(gt, est)
    assert rel[0, 0] < 0.5 and rel[0, 1] < 10.0, rel  # as loose as the fully fitted checkerboard rig
    # a lens calibrated at another image size is refused before anything is read
    other = {"cam00": LensIntrinsics(held.K * [[2], [2], [1]], held.dist, (1280, 960))}
    with pytest.raises(CalibrationError, match="camera 'cam00': its frames are 640x480 but the intrinsics"):
        calibrate({"cam00": src["cam00"], "cam01": src["cam01"]}, CalibrateConfig(board="checkerboard_10x7"),
                  intrinsics=other)  # fmt: skip


def test_compare_rigs_measures_known_differences():
    rng = np.random.default_rng(1)
    cams = []
    for i in range(3):
        R, _ = cv2.Rodrigues(rng.normal(size=3))
        K = np.array([[600.0 + i, 0, 320], [0, 600, 240], [0, 0, 1]])
        cams.append(Camera(f"c{i}", K, np.zeros(5), R, rng.normal(size=3), (640, 480)))
    ref = Rig(tuple(cams))
    # camera 2 turned by 0.2 deg about its own centre, focal +0.3 %, principal point +1.5 px
    dR, _ = cv2.Rodrigues(np.array([0.0, math.radians(0.2), 0.0]))
    c2 = ref[2]
    K = c2.K.copy()
    K[0, 0] *= 1.003
    K[1, 2] += 1.5
    moved = Camera("c2", K, c2.dist, dR @ c2.R_world2cam, dR @ c2.t_world2cam, c2.image_size)
    diffs = compare_rigs(Rig((ref[1], ref[0], moved)), ref)  # order does not matter
    d = {x.camera: x for x in diffs}
    assert d["c0"].rotation_deg < 1e-6 and d["c0"].centre_mm < 1e-6
    assert d["c2"].rotation_deg == pytest.approx(0.2, abs=1e-6) and d["c2"].centre_mm < 1e-6
    assert d["c2"].focal_pct == pytest.approx(0.3, abs=1e-6) and d["c2"].principal_px == pytest.approx(1.5)
    assert d["c0"].rel_rotation_deg == pytest.approx(0.0, abs=1e-6)  # the first camera is c1 here
    with pytest.raises(CalibrationError, match="different cameras"):
        compare_rigs(ref.subset(["c0", "c1"]), ref)


# ------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------
def test_unknown_board_lists_the_shipped_ones(tmp_path):
    assert {"charuco_5x7", "charuco_7x10", "checkerboard_10x7"} <= set(list_boards())
    with pytest.raises(CalibrationError, match="unknown board 'charuco_9x9'.*charuco_5x7"):
        load_board("charuco_9x9")
    res = CliRunner().invoke(main, ["calibrate", str(tmp_path), "--board", "nope", "--out", str(tmp_path / "r.toml")])
    assert res.exit_code == 2 and "error: unknown board 'nope'" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "r.toml").exists()


@pytest.mark.parametrize(
    "text, message",
    [
        ('type = "charuco"\nsquares_x = 5\nsquares_y = 7\nsquare_length = 0.1', r"missing key\(s\) \['marker_length'"),
        (
            'type = "charuco"\nsquares_x = 5\nsquares_y = 7\nsquare_length = 0.1\nmarker_length = 0.08\n'
            'dictionary = "DICT_9X9_1"',
            "unknown ArUco dictionary 'DICT_9X9_1'",
        ),  # fmt: skip
        ('type = "checkerboard"\nsquares_x = 9\nsquares_y = 7\nsquare_length = 0.05', "orientation is ambiguous"),
        ('type = "checkerboard"\nsquares_x = 10\nsquares_y = 7\nsquare_length = 50', "lengths are in metres"),
        (
            'type = "charuco"\nsquares_x = 5\nsquares_y = 7\nsquare_length = 0.1\nmarker_length = 0.1\n'
            'dictionary = "DICT_4X4_50"',
            "smaller than square_length",
        ),  # fmt: skip
        ('type = "checkerboard"\nsquares_x = 10\nsquares_y = 7\nsquare_length = 0.05\ncolour = 1', "unknown key"),
    ],
)
def test_bad_board_files(tmp_path, text, message):
    path = tmp_path / "b.toml"
    path.write_text(text)
    with pytest.raises(CalibrationError, match=message):
        load_board(path)


def test_bad_sources(tmp_path):
    with pytest.raises(CalibrationError, match="camera 'x': source .* does not exist"):
        resolve_sources([f"x={tmp_path / 'missing.mp4'}"])
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    cv2.imwrite(str(tmp_path / "a" / "0.png"), np.zeros((8, 8), np.uint8))
    cv2.imwrite(str(tmp_path / "b" / "0.png"), np.zeros((8, 8), np.uint8))
    with pytest.raises(CalibrationError, match="both name camera 'a'"):
        resolve_sources([tmp_path / "a", f"a={tmp_path / 'b'}"])
    with pytest.raises(CalibrationError, match="pass the folder of images instead"):
        resolve_sources([tmp_path / "a" / "0.png"])
    (tmp_path / "c").mkdir()
    assert list(resolve_sources([tmp_path])) == ["a", "b"]  # a folder of camera folders; c has no images
    with pytest.raises(CalibrationError, match="folder .* holds no images"):
        resolve_sources([f"c={tmp_path / 'c'}"])
    with pytest.raises(CalibrationError, match="holds no videos"):
        resolve_sources([tmp_path / "c"])


def test_iter_frames_stride_max_and_extra(tmp_path):
    for i in range(10):
        cv2.imwrite(str(tmp_path / f"f{i}.png"), np.full((4, 6), i, np.uint8))
    got = [(i, int(img[0, 0])) for i, img in iter_frames(tmp_path, stride=3, max_frames=2, extra=[7])]
    assert got == [(0, 0), (3, 3), (7, 7)]
    assert [i for i, _ in iter_frames(tmp_path, stride=4)] == [0, 4, 8]


def test_too_few_detections_names_the_camera_and_writes_nothing(checker_capture, tmp_path):
    blank = tmp_path / "blank"
    blank.mkdir()
    for i in range(6):
        cv2.imwrite(str(blank / f"{i:03d}.png"), np.full((480, 640), 90 + 10 * i, np.uint8))
    out = tmp_path / "out" / "rig.toml"
    args = ["calibrate", f"cam00={checker_capture.sources['cam00']}", f"blank={blank}"]
    args += ["--board", "checkerboard_10x7", "--out", str(out), "--quiet"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2
    assert "camera 'blank'" in res.output and "only 0 of 6 frames" in res.output and "at least 10" in res.output
    assert not out.exists() and not (tmp_path / "out").exists()


def test_failure_after_calibration_leaves_no_output(checker_capture, tmp_path):
    """A world frame without a usable board view fails only at the very end: nothing is written."""
    src = checker_capture.sources
    unseen = int(np.flatnonzero(~checker_capture.in_view[:, 0] & ~checker_capture.in_view[:, 1])[0])
    out = tmp_path / "rig.toml"
    rep = tmp_path / "report"
    args = ["calibrate", f"cam00={src['cam00']}", f"cam01={src['cam01']}", "--board", "checkerboard_10x7"]
    args += ["--out", str(out), "--report", str(rep), "--set", "min_frames=8", "--world-frame", str(unseen), "--quiet"]
    args += ["--set", "checkerboard_fallback=never"]  # speed: the classic detector costs ~0.3 s per frame missed
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2 and f"world_frame {unseen}: no camera has a usable view" in res.output, res.output
    assert list(tmp_path.iterdir()) == []
    args[args.index("--world-frame") + 1] = "400"
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2 and "world_frame 400 was not read" in res.output and "0..31" in res.output
    assert list(tmp_path.iterdir()) == []


def test_config_errors():
    with pytest.raises(CalibrationError, match="up must be"):
        CalibrateConfig(up="x")
    with pytest.raises(CalibrationError, match="frame_stride"):
        CalibrateConfig(frame_stride=0)
    assert isinstance(Board("b", "checkerboard", 4, 5, 0.03), Board)


def test_camera_without_shared_views_is_named():
    from mvcap.calibrate import _initial_extrinsics

    M = np.full((3, 10, 4, 4), np.nan)
    M[0, :8] = M[1, :8] = np.eye(4)  # cameras a and b share 8 frames
    M[2, 7:] = np.eye(4)  # camera c shares a single frame with them
    with pytest.raises(CalibrationError, match=r"camera 'c' sees the board .* only 1 usable frame\(s\).*at least 3"):
        _initial_extrinsics(["a", "b", "c"], M, 3)
