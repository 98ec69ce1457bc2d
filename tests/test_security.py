"""No code from data files, and a clear one-line error for every invalid input of issue 17.

Malicious files are built the way an attacker would: an object whose ``__reduce__`` calls
a function that creates a marker file. Loading must refuse them *before* the call, so
the marker never appears.
"""

from __future__ import annotations

import os
import pickle
import sys
import types

import h5py
import numpy as np
import pytest
import scipy.sparse
import torch
from click.testing import CliRunner

from mvcap.errors import MvcapError

DEMO_RIG = os.path.join(os.path.dirname(__file__), "..", "calibration", "demo_rig.toml")


class _RunsCode:
    """Pickles as a call of ``func(*args)``: what a crafted file does on unpickling."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _touch_calls(marker):
    """Ways a pickle could create ``marker`` if its globals were honoured."""
    return [
        _RunsCode(os.system, f"touch {marker}"),
        _RunsCode(open, str(marker), "w"),
        _RunsCode(eval, f"open({str(marker)!r}, 'w')"),
        _RunsCode(scipy.sparse.save_npz, str(marker), scipy.sparse.csr_matrix(np.eye(2))),  # was allowed before
        _RunsCode(np.save, str(marker), np.zeros(1)),
    ]


# ------------------------------------------------------------------------- SMPL pickles
def _smpl_like(n=5):
    rng = np.random.default_rng(0)
    return {
        "v_template": rng.normal(size=(n, 3)),
        "shapedirs": rng.normal(size=(n, 3, 10)),
        "posedirs": np.zeros((n, 3, 207)),
        "J_regressor": scipy.sparse.csc_matrix(np.full((24, n), 1.0 / n)),
        "weights": np.full((n, 24), 1.0 / 24),
        "kintree_table": np.array(
            [
                [4294967295, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21],
                list(range(24)),
            ]
        ),  # fmt: skip
        "f": np.array([[0, 1, 2], [2, 3, 4]]),
        "bs_style": "lbs",
    }


@pytest.mark.parametrize("which", range(5))
def test_malicious_smpl_pickle_is_refused_without_running_code(tmp_path, which):
    from mvcap.body import BodyModelError, load_model_arrays

    marker = tmp_path / "PWNED"
    data = _smpl_like()
    data["J_regressor"] = _touch_calls(marker)[which]
    path = tmp_path / "SMPL_NEUTRAL.pkl"
    path.write_bytes(pickle.dumps(data, protocol=2))
    with pytest.raises(BodyModelError, match=r"contains a disallowed object '[\w.]+' and is not a body-model") as e:
        load_model_arrays(path)
    assert isinstance(e.value, MvcapError)
    assert "\n" not in str(e.value)
    assert not marker.exists()


def test_malicious_pickle_refused_at_the_top_level_and_via_copyreg(tmp_path):
    """The attack as the whole file, and hidden behind copyreg._reconstructor (protocol 0)."""
    from mvcap.body import BodyModelError, load_model_arrays

    marker = tmp_path / "PWNED"
    top = tmp_path / "top.pkl"
    top.write_bytes(pickle.dumps(_RunsCode(os.system, f"touch {marker}"), protocol=0))
    with pytest.raises(BodyModelError, match=r"disallowed object '(posix|os)\.system'"):
        load_model_arrays(top)

    # copyreg._reconstructor(subprocess.Popen, object, None), written by hand in protocol 0
    blob = b"ccopy_reg\n_reconstructor\n(csubprocess\nPopen\nc__builtin__\nobject\nNtR."
    sneaky = tmp_path / "sneaky.pkl"
    sneaky.write_bytes(blob)
    with pytest.raises(BodyModelError, match=r"disallowed object 'subprocess\.Popen'"):
        load_model_arrays(sneaky)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_plain_model_pickles_still_load(tmp_path, protocol):
    """Arrays, numpy scalars, sparse matrices, plain containers: every pickle protocol."""
    from mvcap.body import load_model_arrays

    data = _smpl_like()
    data["extra"] = (np.float64(1.5), np.int32(3), {1, 2}, frozenset({3}), [b"x", bytearray(b"y")], slice(1, 2))
    path = tmp_path / "m.pkl"
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    arrays = load_model_arrays(path)
    np.testing.assert_array_equal(arrays["v_template"], data["v_template"])
    np.testing.assert_allclose(arrays["J_regressor"], data["J_regressor"].toarray())
    assert arrays["extra"][0] == 1.5 and arrays["bs_style"] == "lbs"


def test_python2_style_names_and_chumpy_load(tmp_path):
    """Python 2 pickles name copy_reg, __builtin__ and numpy.core; chumpy maps to stand-ins."""
    from mvcap.body import load_model_arrays

    fake_ch = types.ModuleType("chumpy.ch")

    class Ch:
        def __init__(self, x):
            self.x = x

    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    fake_ch.Ch = Ch
    data = _smpl_like()
    data["v_template"] = Ch(data["v_template"])
    fake_chumpy = types.ModuleType("chumpy")
    fake_chumpy.ch = fake_ch
    sys.modules["chumpy"], sys.modules["chumpy.ch"] = fake_chumpy, fake_ch
    try:
        blob = pickle.dumps(data, protocol=0)
    finally:
        del sys.modules["chumpy"], sys.modules["chumpy.ch"]
    # protocol 0 writes Python 2 names (copy_reg, __builtin__); numpy 1.x wrote numpy.core
    assert b"ccopy_reg\n_reconstructor" in blob and b"c__builtin__\nobject" in blob
    blob = blob.replace(b"numpy._core", b"numpy.core")
    assert b"cnumpy.core.multiarray\n_reconstruct" in blob
    path = tmp_path / "py2.pkl"
    path.write_bytes(blob)
    arrays = load_model_arrays(path)
    np.testing.assert_array_equal(arrays["v_template"], _smpl_like()["v_template"])


# ------------------------------------------------------------------------ torch files
def _evil_torch(path, marker, base: dict):
    blob = dict(base)
    blob["payload"] = _RunsCode(os.system, f"touch {marker}")
    torch.save(blob, path)
    return path


def test_malicious_weights_file_is_refused(tmp_path):
    from mvcap.nets.predictor import LearnedPredictor, WeightsError

    marker = tmp_path / "PWNED"
    path = _evil_torch(tmp_path / "evil.pt", marker, {"net_config": {}, "state_dict": {}})
    with pytest.raises(WeightsError, match=r"holds objects other than tensors and plain data.*posix\.system") as e:
        LearnedPredictor.load(path, device="cpu")
    assert "\n" not in str(e.value)
    assert not marker.exists()


def test_malicious_training_checkpoint_is_refused(tmp_path):
    from mvcap.nets.displacement import NetConfig
    from mvcap.nets.train import CheckpointError, TrainConfig, export_weights, train

    marker = tmp_path / "PWNED"
    out = tmp_path / "run"
    out.mkdir()
    _evil_torch(out / "checkpoint.pt", marker, {"net_config": {}, "model": {}, "step": 1})
    tiny = NetConfig(crop_size=32, stem_width=8, encoder_width=8, encoder_out=8, encoder_blocks=1, hg_width=8,
                     hg_stacks=1, hg_depth=1, hg_blocks=1, head_blocks=1)  # fmt: skip
    cfg = TrainConfig(net=tiny, num_workers=0, threads=1)
    with pytest.raises(CheckpointError, match="holds objects other than tensors") as e:
        train(cfg, out, resume=True, progress=False, max_steps=1)
    assert isinstance(e.value, MvcapError)
    with pytest.raises(CheckpointError, match="holds objects other than tensors"):
        export_weights(out / "checkpoint.pt", tmp_path / "w.pt")
    assert not marker.exists()
    torch.save({"hello": 1}, out / "checkpoint.pt")
    with pytest.raises(CheckpointError, match=r"not a mvcap training checkpoint \(missing"):
        export_weights(out / "checkpoint.pt", tmp_path / "w.pt")


def test_malicious_validation_cache_is_regenerated_not_run(tmp_path, monkeypatch):
    from mvcap.nets import train as T

    class FakeDataset(list):
        def __init__(self, data, net, split):
            super().__init__([{"photo": torch.zeros(3, 4, 4)}, {"photo": torch.ones(3, 4, 4)}])

    monkeypatch.setattr(T, "DisplacementDataset", FakeDataset)
    marker = tmp_path / "PWNED"
    cfg = T.TrainConfig(num_workers=0)
    _evil_torch(tmp_path / "val_data.pt", marker, {"key": None})
    batch = T._validation_set(cfg, tmp_path)
    assert batch["photo"].shape == (2, 3, 4, 4)
    assert not marker.exists()
    assert torch.load(tmp_path / "val_data.pt", weights_only=True)["batch"]["photo"].shape == (2, 3, 4, 4)


def test_every_shipped_torch_file_loads_with_weights_only():
    from mvcap.nets.predictor import LearnedPredictor

    root = os.path.join(os.path.dirname(__file__), "..", "models", "displacement")
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.endswith(".pt"))
    assert len(files) >= 2
    for f in files:
        blob = torch.load(f, map_location="cpu", weights_only=True)
        assert isinstance(blob, dict) and "net_config" in blob
        if "state_dict" in blob:
            assert LearnedPredictor.load(f, device="cpu").cfg is not None


# ------------------------------------------------------------------ the invalid inputs
def _cli(*args):
    from mvcap.cli import main

    res = CliRunner().invoke(main, [str(a) for a in args])
    return res, res.output  # stdout and stderr together


def _rig_variant(tmp_path, name, old, new):
    text = open(DEMO_RIG, encoding="utf-8").read()
    first = text.index(old)
    end = text.index("\n", first)
    path = tmp_path / name
    path.write_text(text[:first] + new + text[end:], encoding="utf-8")
    return path


RIG_CASES = [
    ("nan_rotation.toml", "rotation = ", "rotation = [nan, 0.0, 0.0]", r"'rotation' contains NaN or infinite"),
    ("inf_rotation.toml", "rotation = ", "rotation = [inf, 0.0, 0.0]", r"'rotation' contains NaN or infinite"),
    ("inf_size.toml", "size = ", "size = [inf, 240]",
     r"field 'size' \(image_size\) must be \(width, height\) with finite positive"),
    ("zero_focal.toml", "matrix = ", "matrix = [[0.0, 0.0, 260.0], [0.0, 560.0, 253.0], [0.0, 0.0, 1.0]]",
     r"focal lengths must be positive"),
    ("reflection.toml", "rotation = ", "rotation = [[1, 0, 0], [0, 1, 0], [0, 0, -1]]",
     r"not a rotation matrix .*det = -1"),
    ("nan_translation.toml", "translation = ", "translation = [nan, 0, 0]", r"'t_world2cam' contains NaN"),
    ("half_pixel.toml", "size = ", "size = [512.5, 512]", r"'size' \(image_size\) must be whole pixels"),
    ("text_size.toml", "size = ", 'size = ["512", "512"]',
     r"'size' \(image_size\) must be \(width, height\) in pixels"),
]  # fmt: skip


@pytest.mark.parametrize("name,old,new,msg", RIG_CASES, ids=[c[0] for c in RIG_CASES])
def test_invalid_toml_rigs_give_one_line_errors(tmp_path, name, old, new, msg):
    res, out = _cli("rig", "show", _rig_variant(tmp_path, name, old, new))
    assert res.exit_code == 2, out
    assert out.startswith("error: ") and out.count("\n") == 1 and "Traceback" not in out
    assert __import__("re").search(msg, out), out


def _xcp(tmp_path, name, **attrs):
    a = {"aspect": "1.0", "focal": "1400.0", "size": "1920 1080", "radial": "ThirdOrderRadial 958 542 0.01 0 0"}
    a.update(attrs)
    path = tmp_path / name
    path.write_text(
        '<?xml version="1.0"?>\n<Cameras VERSION="1.0">'
        f'<Camera DEVICEID="a" TYPE="VideoInputDevice" PIXEL_ASPECT_RATIO="{a["aspect"]}" SENSOR_SIZE="{a["size"]}"'
        ' SKEW="0"><KeyFrames>'
        f'<KeyFrame FOCAL_LENGTH="{a["focal"]}" ORIENTATION="0 0 0 1" POSITION="0 0 -3000"'
        f' PRINCIPAL_POINT="958 542" VICON_RADIAL2="{a["radial"]}"/></KeyFrames></Camera></Cameras>'
    )
    return path


@pytest.mark.parametrize(
    "attrs,msg",
    [
        ({"aspect": "0"}, r"'PIXEL_ASPECT_RATIO' must be positive, got 0\.0"),
        ({"aspect": "0", "radial": "ThirdOrderRadial 958 542 0 0 0"}, r"'PIXEL_ASPECT_RATIO' must be positive"),
        ({"focal": "0"}, r"'KeyFrame\.FOCAL_LENGTH' must be positive"),
        ({"focal": "-5"}, r"'KeyFrame\.FOCAL_LENGTH' must be positive"),
        ({"size": "0 1080"}, r"'SENSOR_SIZE' \(image_size\) must be \(width, height\) with finite positive"),
        ({"radial": "ThirdOrderRadial 958 542 1e300 1e300 1e300"}, r"VICON_RADIAL2.*(monotonic|refitted)"),
    ],
)
def test_invalid_vicon_rigs_give_one_line_errors(tmp_path, attrs, msg):
    res, out = _cli("rig", "show", _xcp(tmp_path, "calib.xcp", **attrs))
    assert res.exit_code == 2 and out.startswith("error: ") and out.count("\n") == 1, out
    assert __import__("re").search(msg, out), out


def test_qualisys_zero_focal_and_zero_fov(tmp_path):
    from mvcap.rigio import RigError, load_qualisys_rig, load_rig

    cam = (
        '<camera serial="1" model="Miqus Video"><fov_video left="0" top="0" right="{right}" bottom="1079"/>'
        '<transform x="0" y="0" z="3000" r11="1" r12="0" r13="0" r21="0" r22="1" r23="0" r31="0" r32="0" r33="1"/>'
        '<intrinsic focalLengthU="{fu}" focalLengthV="96000" centerPointU="61440" centerPointV="34560"/></camera>'
    )

    def write(**kw):
        p = tmp_path / "c.qca.txt"
        p.write_text(f'<?xml version="1.0"?><calibration><cameras>{cam.format(**kw)}</cameras></calibration>')
        return p

    assert load_rig(write(right=1919, fu=96000))["1"].K[0, 0] == 1500.0
    with pytest.raises(RigError, match=r"'intrinsic\.focalLengthU/V' must be positive"):
        load_rig(write(right=1919, fu=0))
    with pytest.raises(RigError, match=r"'fov_video' \(image_size\) must be \(width, height\) with finite positive"):
        load_rig(write(right=-1, fu=96000))
    with pytest.raises(RigError, match=r"subpixel_factor must be a positive number"):
        load_qualisys_rig(write(right=1919, fu=96000), subpixel_factor=0)


def test_non_utf8_rig_and_config_files(tmp_path):
    rig = tmp_path / "rig.toml"
    rig.write_bytes(open(DEMO_RIG, "rb").read().replace(b'name = "cam0"', b'name = "cam\xe90"'))
    res, out = _cli("rig", "show", rig)
    assert res.exit_code == 2 and out.startswith("error: ") and "not a UTF-8 text file" in out, out
    cfg = tmp_path / "init.toml"
    cfg.write_bytes(b"# r\xe9glages\n")
    res, out = _cli("init", tmp_path / "missing.h5", "--config", cfg)
    assert res.exit_code == 2 and "not a UTF-8 text file (byte 3" in out and out.count("\n") == 1, out


def test_rig_destination_that_is_a_folder(tmp_path):
    (tmp_path / "out.toml").mkdir()
    res, out = _cli("rig", "convert", DEMO_RIG, tmp_path / "out.toml")
    assert res.exit_code == 2 and "is a folder; give the rig file to write" in out and out.count("\n") == 1, out
    (tmp_path / "plainfile").write_text("x")
    res, out = _cli("rig", "convert", DEMO_RIG, tmp_path / "plainfile")
    assert res.exit_code == 2 and "is an existing file, not a folder" in out, out
    assert (tmp_path / "plainfile").read_text() == "x"


# ------------------------------------------------------------------------- npz init
@pytest.mark.parametrize(
    "poses,msg",
    [
        (np.array([["a"] * 72] * 2), r"'poses' holds text \(dtype <U1\)"),
        (np.zeros((2, 72)) + 1j, r"'poses' holds complex numbers"),
        (np.zeros((2, 72), np.complex64), r"'poses' holds complex numbers"),  # even with 0 imaginary part
        (np.zeros((2, 72), "S3"), r"'poses' holds bytes"),
        (np.zeros((0, 72)), r"the pose has 0 frames"),
    ],
)
def test_npz_init_dtype_checks(tmp_path, poses, msg):
    from mvcap.initialize import InitError, load_npz_init

    path = tmp_path / "init.npz"
    np.savez(path, poses=poses, trans=np.zeros((len(poses), 3)), betas=np.zeros(10))
    with pytest.raises(InitError, match=msg):
        load_npz_init(path)


def test_npz_init_other_arrays_checked(tmp_path):
    from mvcap.initialize import InitError, load_npz_init

    path = tmp_path / "init.npz"
    np.savez(path, poses=np.zeros((2, 72)), trans=np.zeros((2, 3), complex), betas=np.zeros(10))
    with pytest.raises(InitError, match=r"'trans' holds complex"):
        load_npz_init(path)
    np.savez(path, poses=np.zeros((2, 72)), trans=np.zeros((2, 3)), betas=np.array(["x"] * 10))
    with pytest.raises(InitError, match=r"'betas' holds text"):
        load_npz_init(path)
    np.savez(path, poses=np.zeros((2, 72), np.float32), trans=np.zeros((2, 3), np.int16), betas=np.zeros(10, bool))
    params = load_npz_init(path)
    assert params.pose_rotvecs.shape == (2, 24, 3) and params.betas.shape == (2, 10)


# ------------------------------------------------------------------------- session open
def _session(tmp_path):
    from mvcap.capture import Session
    from mvcap.rigio import load_rig

    path = tmp_path / "s.h5"
    Session.create(path, load_rig(DEMO_RIG), 2, fps=10, image_size=(32, 32)).close()
    return path


def test_empty_h5_opened_for_writing_is_left_unchanged(tmp_path):
    from mvcap.capture import Session, SessionError

    empty = tmp_path / "empty.h5"
    empty.write_bytes(b"")
    for mode in ("a", "r"):
        with pytest.raises(SessionError, match=r"is empty \(0 bytes\), not an mvcap session; it was left unchanged"):
            Session.open(empty, mode)
        assert empty.stat().st_size == 0
    np.savez(tmp_path / "p.npz", poses=np.zeros((2, 72)), trans=np.zeros((2, 3)), betas=np.zeros(10))
    res, out = _cli("init", empty, "--from-npz", tmp_path / "p.npz")
    assert res.exit_code == 2 and "is empty (0 bytes)" in out and empty.stat().st_size == 0, out


def test_foreign_hdf5_opened_for_writing_is_left_unchanged(tmp_path):
    from mvcap.capture import Session, SessionError

    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.arange(3)
    before = other.read_bytes()
    with pytest.raises(SessionError, match="not an mvcap session"):
        Session.open(other, "a")
    assert other.read_bytes() == before
    text = tmp_path / "notes.h5"
    text.write_bytes(b"hello, not hdf5\n")
    with pytest.raises(SessionError, match="is not an HDF5 file"):
        Session.open(text, "a")
    assert text.read_bytes() == b"hello, not hdf5\n"


def test_write_protected_session_is_not_called_corrupt(tmp_path, monkeypatch):
    from mvcap import capture
    from mvcap.capture import Session, SessionError

    path = _session(tmp_path)
    real = h5py.File

    def refuse_writing(name, mode="r", *a, **kw):
        if mode != "r":  # exactly what h5py raises for a write-protected file
            raise PermissionError(
                13,
                f"Unable to synchronously open file (unable to open file: name = '{name}', errno = 13, "
                "error message = 'Permission denied', flags = 1, o_flags = 2)",
            )
        return real(name, mode, *a, **kw)

    monkeypatch.setattr(capture.h5py, "File", refuse_writing)
    with pytest.raises(SessionError, match=r"no permission to open session file .* for writing") as e:
        Session.open(path, "a")
    assert "corrupt" not in str(e.value).replace("not corrupt", "")
    with Session.open(path, "r") as s:  # reading still works
        assert s.num_frames == 2


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores file permissions")
def test_write_protected_session_real_permissions(tmp_path):
    from mvcap.capture import Session, SessionError

    path = _session(tmp_path)
    path.chmod(0o444)
    try:
        with pytest.raises(SessionError, match="no permission"):
            Session.open(path, "a")
    finally:
        path.chmod(0o644)


# ------------------------------------------------------------------------- config values
def test_config_wrong_types_and_unreadable_files(tmp_path):
    from mvcap.config import ConfigError, load_config
    from mvcap.initialize import InitConfig

    for text, msg in [
        ('w_2d = "heavy"', r"'w_2d' must be a number, got 'heavy'"),
        ("w_2d = nan", r"'w_2d' must be a number, got nan"),
        ("w_2d = true", r"'w_2d' must be a number, got True"),
        ("iterations = true", r"'iterations' must be int, got True"),
        ("iterations = 1.5", r"'iterations' must be int, got 1\.5"),
        ("detect = 3", r"'detect' must be a table of settings"),
    ]:
        p = tmp_path / "c.toml"
        p.write_text(text + "\n")
        try:
            load_config(InitConfig, p)
        except ConfigError as exc:
            assert __import__("re").search(msg, str(exc)), (text, str(exc))
        else:
            pytest.fail(f"{text!r} was accepted")
    (tmp_path / "dir.toml").mkdir()
    with pytest.raises(ConfigError, match="is a folder, not a config file"):
        load_config(InitConfig, tmp_path / "dir.toml")
    with pytest.raises(ConfigError, match="cannot also be a table"):
        load_config(InitConfig, None, ["w_2d=1", "w_2d.x=2"])


def test_body_model_error_is_one_line_for_garbage(tmp_path):
    from mvcap.body import BodyModelError, load_model_arrays

    path = tmp_path / "m.pkl"
    path.write_bytes(b"\x80\x05garbage")
    with pytest.raises(BodyModelError, match="Could not unpickle body model file"):
        load_model_arrays(path)
    path.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(BodyModelError, match="holds a list"):
        load_model_arrays(path)
