"""Rig file formats: round trips, conversions, Qualisys/Vicon readers, bad input."""

import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from mvcap.cameras import Camera, Rig, RigError, project
from mvcap.rigio import (
    RigConversionWarning,
    load_easymocap_rig,
    load_qualisys_rig,
    load_rig,
    load_vicon_rig,
    save_rig,
)

ROOT = Path(__file__).resolve().parents[1]
DEMO_RIG = ROOT / "calibration" / "demo_rig.toml"
EXAMPLE_EASYMOCAP = ROOT / "calibration" / "examples" / "easymocap"


def random_rig(seed=0, n=3):
    rng = np.random.default_rng(seed)
    cams = []
    for i in range(n):
        R, _ = cv2.Rodrigues(rng.normal(size=3) * 0.5)
        K = np.array([[rng.uniform(400, 900), 0.0, rng.uniform(300, 340)],
                      [0, rng.uniform(400, 900), rng.uniform(230, 250)], [0, 0, 1]])
        dist = np.array([rng.uniform(-0.2, 0.2), rng.uniform(-0.05, 0.05),
                         rng.uniform(-1e-3, 1e-3), rng.uniform(-1e-3, 1e-3), rng.uniform(-0.01, 0.01)])
        t = np.array([0.1, -0.2, 4.0]) + rng.normal(size=3) * 0.1
        cams.append(Camera(f"c{i}-x_{i}", K, dist, R, t, (640 + 2 * i, 480)))
    return Rig(tuple(cams))


POINTS = torch.as_tensor(np.random.default_rng(1).normal(size=(100, 3)) * 0.5, dtype=torch.float64)


def assert_same_projection(a: Rig, b: Rig, tol=1e-6):
    assert a.names == b.names
    assert [c.image_size for c in a] == [c.image_size for c in b]
    err = (project(a, POINTS) - project(b, POINTS)).abs().max().item()
    assert err < tol, f"projections differ by {err} px"


# ------------------------------------------------------------------------------------------
# round trips and conversion
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", ["rig.toml", "folder", "sub/intri.yml", "sub2/extri.yml"])
def test_every_writable_format_round_trips(tmp_path, target):
    rig = random_rig()
    save_rig(rig, tmp_path / target)
    back = load_rig(tmp_path / target)
    assert_same_projection(rig, back)
    for c, d in zip(rig, back):
        np.testing.assert_allclose(d.K, c.K, rtol=0, atol=1e-12)
        np.testing.assert_allclose(d.dist, c.dist, rtol=0, atol=1e-15)


def test_toml_yaml_conversion_preserves_projections(tmp_path):
    rig = load_rig(DEMO_RIG)
    save_rig(rig, tmp_path / "em")
    assert sorted(p.name for p in (tmp_path / "em").iterdir()) == ["extri.yml", "intri.yml"]
    assert (tmp_path / "em" / "intri.yml").read_text().startswith("%YAML:1.0")
    from_yaml = load_rig(tmp_path / "em" / "extri.yml")  # either file finds its sibling
    save_rig(from_yaml, tmp_path / "back.toml")
    assert_same_projection(rig, load_rig(tmp_path / "back.toml"))


def test_shipped_easymocap_example_matches_demo_rig():
    assert_same_projection(load_rig(DEMO_RIG), load_rig(EXAMPLE_EASYMOCAP))


def test_easymocap_reads_rodrigues_only_and_numeric_names(tmp_path):
    """EasyMocap files from other tools: names like "01", R_ (Rodrigues) without Rot_."""
    K = np.array([[800.0, 0, 320], [0, 810, 240], [0, 0, 1]])
    rvec = np.array([0.1, -0.2, 0.3])
    fs = cv2.FileStorage(str(tmp_path / "intri.yml"), cv2.FILE_STORAGE_WRITE)
    fs.startWriteStruct("names", cv2.FileNode_SEQ)
    fs.write("", "01")
    fs.endWriteStruct()
    fs.write("K_01", K)
    fs.write("dist_01", np.array([[0.01, 0.0, 0.0, 0.0, 0.0]]))
    fs.release()
    fs = cv2.FileStorage(str(tmp_path / "extri.yml"), cv2.FILE_STORAGE_WRITE)
    fs.write("R_01", rvec.reshape(3, 1))
    fs.write("T_01", np.array([[0.1], [0.2], [3.0]]))
    fs.release()
    with pytest.raises(RigError, match=r"'01'.*H_01.*image_size"):
        load_rig(tmp_path)
    rig = load_rig(tmp_path / "intri.yml", image_size=(640, 480))
    cam = rig["01"]
    assert cam.image_size == (640, 480)
    np.testing.assert_allclose(cam.R_world2cam, cv2.Rodrigues(rvec)[0], atol=1e-12)
    with pytest.raises(RigError, match="with_image_size"):
        load_rig(DEMO_RIG, image_size=(100, 100))


# ------------------------------------------------------------------------------------------
# Qualisys and Vicon: cameras built by hand
# ------------------------------------------------------------------------------------------
def look_at_axes(centre, target=(0.0, 0.0, 0.0), up=(0.0, 0.0, 1.0)):
    """OpenCV camera axes in world coordinates (x right, y down, z forward) for a Z-up world."""
    z = np.asarray(target, float) - np.asarray(centre, float)
    z /= np.linalg.norm(z)
    x = np.cross(z, up)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return x, y, z


def hand_checks(cam: Camera, centre_m, fx, fy, cx, cy):
    """Project points whose pixels are known by construction (no distortion)."""
    x, y, z = look_at_axes(centre_m)
    np.testing.assert_allclose(cam.center_world, centre_m, atol=1e-9)
    pts = np.array([
        [0.0, 0.0, 0.0],                                     # the look-at target -> principal point
        centre_m + 2.0 * z + 0.3 * x - 0.1 * y,              # camera coords (0.3, -0.1, 2)
        [0.0, 0.0, 0.5],                                     # above the origin (Z up) -> higher in the image
    ])
    uv = project(Rig((cam,)), torch.as_tensor(pts)).numpy()[0]
    np.testing.assert_allclose(uv[0], [cx, cy], atol=1e-6)
    np.testing.assert_allclose(uv[1], [cx + fx * 0.15, cy - fy * 0.05], atol=1e-6)
    assert uv[2, 1] < cy - 10 and abs(uv[2, 0] - cx) < 1e-6


def qca_camera(serial, model, centre_mm, fx, fy, cx, cy, left, top, w, h, dist=(0, 0, 0, 0, 0), extra=""):
    x, y, z = look_at_axes(np.asarray(centre_mm) / 1000)
    # Qualisys camera axes: x right, y UP, z BACKWARDS (looks along -z); the transform's
    # rows r1*, r2*, r3* are those axes in world coordinates (camera->world, column-wise).
    rows = [x, -y, -z]
    r = " ".join(f'r{i + 1}{j + 1}="{float(rows[i][j])!r}"' for i in range(3) for j in range(3))
    k1, k2, p1, p2, k3 = dist
    return f"""
    <camera active="1" avg-residual="0.3" serial="{serial}" model="{model}" viewrotation="0" {extra}>
      <fov_marker left="0" top="0" right="2047" bottom="1087"/>
      <fov_video left="{left}" top="{top}" right="{left + w - 1}" bottom="{top + h - 1}"/>
      <transform x="{centre_mm[0]}" y="{centre_mm[1]}" z="{centre_mm[2]}" {r}/>
      <intrinsic focallength="6.2" sensorMinU="0" sensorMaxU="131071" sensorMinV="0" sensorMaxV="69631"
        focalLengthU="{fx * 64!r}" focalLengthV="{fy * 64!r}" centerPointU="{(cx + left) * 64!r}"
        centerPointV="{(cy + top) * 64!r}" skew="0" radialDistortion1="{k1}" radialDistortion2="{k2}"
        radialDistortion3="{k3}" tangentalDistortion1="{p1}" tangentalDistortion2="{p2}"/>
    </camera>"""


def write_qca(tmp_path, cameras):
    p = tmp_path / "session.qca.txt"
    p.write_text('<?xml version="1.0"?>\n<calibration source="test"><cameras>'
                 + "".join(cameras) + "</cameras></calibration>")
    return p


def test_qualisys_reader_units_offsets_and_pose(tmp_path):
    c1, c2 = np.array([4000.0, -3000.0, 1500.0]), np.array([-2500.0, 3500.0, 2200.0])
    dist = (-0.05, 0.12, 0.0006, -0.0004, 0.01)
    p = write_qca(tmp_path, [
        qca_camera("26580", "Miqus Video", c1, 1500.0, 1502.0, 955.5, 541.25, 32, 16, 1920, 1080),
        qca_camera("26581", "Miqus M3", c1, 1000.0, 1000.0, 900.0, 500.0, 0, 0, 1824, 1088),  # marker camera
        qca_camera("26582", "Miqus Video+", c2, 1200.0, 1200.0, 640.0, 360.0, 8, 4, 1280, 720, dist),
    ])
    rig = load_rig(p)
    assert rig.names == ("26580", "26582")                   # marker-only camera dropped
    cam = rig["26580"]
    assert cam.image_size == (1920, 1080)                     # right - left + 1, bottom - top + 1
    np.testing.assert_allclose(cam.K, [[1500.0, 0, 955.5], [0, 1502.0, 541.25], [0, 0, 1]], atol=1e-9)
    hand_checks(cam, c1 / 1000, 1500.0, 1502.0, 955.5, 541.25)
    cam2 = rig["26582"]
    assert cam2.image_size == (1280, 720)
    np.testing.assert_allclose(cam2.dist, [-0.05, 0.12, 0.0006, -0.0004, 0.01])  # k1 k2 p1 p2 k3, not /64
    hand_checks(Camera("nodist", cam2.K, np.zeros(5), cam2.R_world2cam, cam2.t_world2cam, cam2.image_size),
                c2 / 1000, 1200.0, 1200.0, 640.0, 360.0)
    assert load_qualisys_rig(p, video_only=False).names == ("26580", "26581", "26582")


def test_qualisys_bad_input(tmp_path):
    good = qca_camera("77", "Miqus Video", [3000.0, 0.0, 1000.0], 1500.0, 1500.0, 960.0, 540.0, 0, 0, 1920, 1080)
    with pytest.raises(RigError, match=r"'77'.*transform.*not a rotation"):
        load_rig(write_qca(tmp_path, [good.replace('r11="', 'r11="2.0" old11="')]))
    no_fov = good.replace("<fov_video ", "<other_fov ")
    with pytest.raises(RigError, match=r"'77'.*fov_video.*image_size"):
        load_rig(write_qca(tmp_path, [no_fov]))
    assert load_rig(write_qca(tmp_path, [no_fov]), image_size=(1920, 1080))["77"].K[0, 2] == pytest.approx(960.0)
    with pytest.warns(RigConversionWarning, match="viewrotation"):
        load_rig(write_qca(tmp_path, [good.replace('viewrotation="0"', 'viewrotation="90"')]))


def xcp_camera(device, centre_mm, f, aspect, cx, cy, w, h, radial2=None, cam_type="VideoInputDevice"):
    x, y, z = look_at_axes(np.asarray(centre_mm) / 1000)
    R_world2cam = np.stack([x, y, z])                         # rows: camera axes in world
    qx, qy, qz, qw = (float(v) for v in Rotation.from_matrix(R_world2cam).as_quat())  # scalar last
    radial = radial2 if radial2 is not None else f"ThirdOrderRadial {cx} {cy} 0 0 0"
    return f"""
  <Camera DEVICEID="{device}" USERID="1" TYPE="{cam_type}" PIXEL_ASPECT_RATIO="{aspect}" SENSOR_SIZE="{w} {h}" SKEW="0">
    <ControlFrames/>
    <KeyFrames>
      <KeyFrame FRAME="0" FOCAL_LENGTH="{f!r}" IMAGE_ERROR="0.1" ORIENTATION="{qx!r} {qy!r} {qz!r} {qw!r}"
        POSITION="{centre_mm[0]} {centre_mm[1]} {centre_mm[2]}" PRINCIPAL_POINT="{cx} {cy}"
        VICON_RADIAL2="{radial}" WORLD_ERROR="0.2"/>
    </KeyFrames>
  </Camera>"""


def write_xcp(tmp_path, cameras):
    p = tmp_path / "calib.xcp"
    p.write_text('<?xml version="1.0"?>\n<Cameras VERSION="1.0">' + "".join(cameras) + "</Cameras>")
    return p


def test_vicon_reader_pose_and_units(tmp_path):
    c1 = np.array([-3500.0, 2500.0, 1800.0])
    p = write_xcp(tmp_path, [
        xcp_camera("2107", c1, 1400.0, 1.0, 958.0, 542.0, 1920, 1080),
        xcp_camera("9001", c1, 900.0, 1.0, 500.0, 500.0, 1000, 1000, cam_type="Vantage"),  # marker camera
    ])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # zero distortion: no approximation warning
        rig = load_rig(p)
    assert rig.names == ("2107",)
    cam = rig["2107"]
    assert cam.image_size == (1920, 1080)
    np.testing.assert_allclose(cam.dist, 0)
    hand_checks(cam, c1 / 1000, 1400.0, 1400.0, 958.0, 542.0)
    assert load_vicon_rig(p, video_only=False).names == ("2107", "9001")
    # pixel aspect ratio: fy = f / a
    assert load_rig(write_xcp(tmp_path, [xcp_camera("a", c1, 1400.0, 1.25, 958.0, 542.0, 1920, 1080)]))[
        "a"].K[1, 1] == pytest.approx(1120.0)


def vicon_correct(uv, f, a, w0, w1, w2, w3):
    """Vicon's radial correction written out independently: observed pixel -> ideal pixel."""
    dx, dy = uv[:, 0] - w0, a * (uv[:, 1] - w1)
    r2 = (dx**2 + dy**2) / f**2
    s = 1 + w2 * r2 + w3 * r2**2
    return np.stack([w0 + s * dx, w1 + s * dy / a], axis=1)


def test_vicon_distortion_is_refitted_with_a_warning(tmp_path):
    c1 = np.array([0.0, -4000.0, 1200.0])
    f, cx, cy, w2, w3 = 1400.0, 958.0, 542.0, 0.08, -0.02  # Vicon corrects outwards: OpenCV k1 < 0
    p = write_xcp(tmp_path, [xcp_camera("d", c1, f, 1.0, cx, cy, 1920, 1080,
                                        radial2=f"ThirdOrderRadial {cx} {cy} {w2} {w3} 0")])
    with pytest.warns(RigConversionWarning, match=r"'d'.*approximate.*px"):
        rig = load_rig(p)
    cam = rig["d"]
    assert cam.dist[0] < 0 and np.all(cam.dist[2:] == 0)
    # points spread over the image: distorted projection, corrected with Vicon's model,
    # must land on the ideal pinhole projection
    x, y, z = look_at_axes(c1 / 1000)
    uu, vv = np.meshgrid(np.linspace(-0.6, 0.6, 9), np.linspace(-0.35, 0.35, 7))
    pts = c1 / 1000 + 3.0 * (z[None] + uu.reshape(-1, 1) * x[None] + vv.reshape(-1, 1) * y[None])
    uv = project(rig, torch.as_tensor(pts)).numpy()[0]
    ideal = project(rig.without_distortion(), torch.as_tensor(pts)).numpy()[0]
    assert np.abs(uv - ideal).max() > 20                     # the distortion is substantial
    assert np.abs(vicon_correct(uv, f, 1.0, cx, cy, w2, w3) - ideal).max() < 0.5


# ------------------------------------------------------------------------------------------
# bad EasyMocap input
# ------------------------------------------------------------------------------------------
def _demo_pair(tmp_path):
    folder = tmp_path / "em"
    save_rig(load_rig(DEMO_RIG), folder)
    return folder


def test_missing_extri(tmp_path):
    folder = _demo_pair(tmp_path)
    (folder / "extri.yml").unlink()
    with pytest.raises(RigError, match=r"extri\.yml.*not found"):
        load_rig(folder / "intri.yml")
    with pytest.raises(RigError, match=r"extri\.yml.*not found"):
        load_easymocap_rig(folder)


def test_unknown_camera_in_extri(tmp_path):
    folder = _demo_pair(tmp_path)
    text = (folder / "extri.yml").read_text()
    (folder / "extri.yml").write_text(text.replace("T_cam3:", "T_cam9:"))
    with pytest.raises(RigError, match=r"camera 'cam9'.*T_cam9.*unknown"):
        load_rig(folder)
    (folder / "extri.yml").write_text(text.replace("   - cam3\n", "   - cam3\n   - cam9\n"))
    with pytest.raises(RigError, match=r"camera 'cam9'.*names.*unknown"):
        load_rig(folder)


def test_missing_extrinsic_field(tmp_path):
    folder = _demo_pair(tmp_path)
    text = (folder / "extri.yml").read_text()
    (folder / "extri.yml").write_text(text.replace("T_cam2:", "X_cam2:"))
    with pytest.raises(RigError, match=r"camera 'cam2'.*'T_cam2' is missing"):
        load_rig(folder)


def test_not_a_rotation(tmp_path):
    folder = _demo_pair(tmp_path)
    fs = cv2.FileStorage(str(folder / "extri.yml"), cv2.FILE_STORAGE_WRITE)
    fs.startWriteStruct("names", cv2.FileNode_SEQ)
    fs.write("", "cam0")
    fs.endWriteStruct()
    fs.write("Rot_cam0", np.diag([1.0, 2.0, 1.0]))
    fs.write("T_cam0", np.zeros((3, 1)))
    fs.release()
    with pytest.raises(RigError, match=r"camera 'cam0'.*'Rot_cam0' is not a rotation"):
        load_rig(folder)


def test_inconsistent_rodrigues_and_matrix(tmp_path):
    folder = _demo_pair(tmp_path)
    text = (folder / "extri.yml").read_text()
    (folder / "extri.yml").write_text(text.replace("data: [ -2.9411940997639148, 0., 0. ]",
                                                   "data: [ -2.8, 0., 0. ]"))
    with pytest.raises(RigError, match=r"camera 'cam0'.*Rot_cam0.*R_cam0.*disagree"):
        load_rig(folder)


def test_unwritable_name_and_unknown_format(tmp_path):
    rig = Rig((Camera("cam 0", np.diag([500.0, 500.0, 1.0]), np.zeros(5), np.eye(3), [0, 0, 3.0], (64, 48)),))
    with pytest.raises(RigError, match=r"camera 'cam 0'.*name"):
        save_rig(rig, tmp_path / "em")
    save_rig(rig, tmp_path / "ok.toml")  # TOML takes any name
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(RigError, match="supported"):
        load_rig(tmp_path / "x.json")
    with pytest.raises(RigError, match="writable"):
        save_rig(rig, tmp_path / "x.json")


def test_toml_names_with_quotes_and_control_characters_round_trip(tmp_path):
    from dataclasses import replace

    rig = load_rig(DEMO_RIG)
    names = ['a\nb"c\\d', "tab\there\x7f\x01", "café", "plain"]
    odd = Rig(tuple(replace(c, name=n) for c, n in zip(rig, names)))
    save_rig(odd, tmp_path / "names.toml")
    assert load_rig(tmp_path / "names.toml").names == tuple(names)


def test_easymocap_file_that_is_not_utf8_is_named(tmp_path):
    (tmp_path / "intri.yml").write_text('%YAML:1.0\n---\nnames:\n   - "c0"\n')
    (tmp_path / "extri.yml").write_bytes(b"\x80:")  # OpenCV parses it, then its key is not text
    with pytest.raises(RigError, match=r"extri.yml: not a UTF-8 text file"):
        load_rig(tmp_path)
