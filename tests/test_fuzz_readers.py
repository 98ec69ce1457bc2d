"""Property-based tests of the file readers: for any file content, a reader either returns
valid data or raises the module's own one-line error -- never a traceback from numpy, cv2,
tomllib or a ZeroDivisionError, and never a camera with NaN/inf or a non-rotation.

Each strategy mixes a valid file with fields replaced by arbitrary values (so the fuzzing
reaches deep into the reader), plus fully arbitrary bytes.
"""

from __future__ import annotations

import json
import math
import warnings
from xml.sax.saxutils import quoteattr

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mvcap.errors import MvcapError


def FUZZ(n: int = 100):  # noqa: N802 - reads like the settings decorator it returns
    """Settings of one fuzz test: ``n`` examples (the suite's fuzzing stays well under 30 s)."""
    return settings(max_examples=n, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def _own_error(exc: BaseException) -> bool:
    """MvcapError, or (until every module error derives from it) a ValueError class of mvcap's own."""
    return isinstance(exc, MvcapError) or (isinstance(exc, ValueError) and type(exc).__module__.startswith("mvcap."))


def _expect_only_own_errors(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - the property under test
            if not _own_error(exc):
                raise AssertionError(f"{type(exc).__module__}.{type(exc).__name__} escaped: {exc}") from exc
            assert str(exc).strip(), "an error without a message"
            return None


def _check_rig(rig) -> None:
    """What every reader promises about a rig it returns."""
    if rig is None:
        return
    for cam in rig:
        for a in (cam.K, cam.dist, cam.R_world2cam, cam.t_world2cam):
            assert np.all(np.isfinite(a))
        R = cam.R_world2cam
        assert np.abs(R @ R.T - np.eye(3)).max() < 1e-3 and abs(np.linalg.det(R) - 1) < 1e-2
        assert cam.K[0, 0] > 0 and cam.K[1, 1] > 0
        assert all(isinstance(s, int) and s > 0 for s in cam.image_size)


# ----------------------------------------------------------------------------- values
numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-1e4, 1e4),
    st.integers(-(10**20), 10**20),
    st.sampled_from([0, 0.0, -0.0, 1, -1, 1e-300, 1e308]),
)
scalars = st.one_of(numbers, st.booleans(), st.text(max_size=6))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4), max_leaves=12)


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(max(min(v, 2**63 - 1), -(2**63)))
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_value(x)}" for k, x in v.items()) + "}"
    return "[" + ", ".join(_toml_value(x) for x in v) + "]"


def _toml_doc(tables: dict) -> str:
    lines = []
    for section, entries in tables.items():
        if isinstance(entries, dict):
            lines.append(f"[{json.dumps(section)}]")
            lines += [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in entries.items()]
        else:
            lines.insert(0, f"{json.dumps(section)} = {_toml_value(entries)}")
    return "\n".join(lines) + "\n"


def _maybe(valid, wild=values):
    """The valid value most of the time, an arbitrary one otherwise."""
    return st.one_of(st.just(valid), st.just(valid), wild)


# ------------------------------------------------------------------------- TOML rigs
toml_camera = st.fixed_dictionaries(
    {},
    optional={
        "name": _maybe("cam0", scalars),
        "size": _maybe([640, 480], st.one_of(values, st.lists(numbers, min_size=2, max_size=2))),
        "matrix": _maybe([[500.0, 0.0, 320.0], [0.0, 500.0, 240.0], [0.0, 0.0, 1.0]],
                         st.lists(st.lists(numbers, min_size=3, max_size=3), min_size=3, max_size=3)),
        "distortions": _maybe([0.01, -0.02, 0.0, 0.0, 0.0], st.lists(numbers, max_size=6)),
        "rotation": _maybe([0.1, -0.2, 3.0], st.one_of(st.lists(numbers, min_size=3, max_size=3), values)),
        "translation": _maybe([0.0, 1.0, 3.0], st.lists(numbers, min_size=3, max_size=3)),
    },
)  # fmt: skip


@FUZZ(150)
@given(cams=st.dictionaries(st.sampled_from(["cam_0", "cam_1", "metadata", "x"]), toml_camera, max_size=3))
def test_toml_rig_reader_fuzzed_fields(scratch, cams):
    from mvcap.rigio import load_rig

    path = scratch / "rig.toml"
    path.write_text(_toml_doc(cams), encoding="utf-8")
    _check_rig(_expect_only_own_errors(load_rig, path))


@FUZZ(100)
@given(data=st.one_of(st.binary(max_size=300), st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass"))))
def test_toml_rig_reader_arbitrary_bytes(scratch, data):
    from mvcap.rigio import load_rig

    path = scratch / "raw.toml"
    path.write_bytes(data)
    _check_rig(_expect_only_own_errors(load_rig, path))


# --------------------------------------------------------------------- EasyMocap YAML
def _yaml_num(v) -> str:
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, bool):
        return "1" if v else "0"
    v = float(v) if not isinstance(v, int) else v
    if isinstance(v, float) and math.isnan(v):
        return ".Nan"
    if isinstance(v, float) and math.isinf(v):
        return ".Inf" if v > 0 else "-.Inf"
    return repr(v)


def _yaml_mat(rows, cols, vals) -> str:
    data = ", ".join(_yaml_num(v) for v in vals)
    return f"!!opencv-matrix\n   rows: {rows}\n   cols: {cols}\n   dt: d\n   data: [ {data} ]"


yaml_nums = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.floats(-1e4, 1e4), st.integers(-(10**9), 10**9)
)


@st.composite
def easymocap_pair(draw):
    name = draw(st.sampled_from(["c0", "cam_1", "1", "a-b"]))
    K = draw(_maybe([500.0, 0, 320, 0, 500, 240, 0, 0, 1], st.lists(yaml_nums, min_size=9, max_size=9)))
    dist = draw(_maybe([0.01, 0, 0, 0, 0], st.lists(yaml_nums, min_size=1, max_size=8)))
    Rvec = draw(_maybe([0.1, 0.2, 0.3], st.lists(yaml_nums, min_size=3, max_size=3)))
    Rot = draw(st.none() | st.lists(yaml_nums, min_size=9, max_size=9) | st.just([1.0, 0, 0, 0, 1, 0, 0, 0, 1]))
    T = draw(_maybe([0.0, 0.0, 3.0], st.lists(yaml_nums, min_size=3, max_size=3)))
    H, W = draw(_maybe(480, yaml_nums)), draw(_maybe(640, yaml_nums))
    intri = [
        "%YAML:1.0", "---", "names:", f'   - "{name}"',
        f"K_{name}: {_yaml_mat(3, 3, K)}", f"dist_{name}: {_yaml_mat(1, len(dist), dist)}",
        f"H_{name}: {_yaml_num(H)}", f"W_{name}: {_yaml_num(W)}",
    ]  # fmt: skip
    extri = ["%YAML:1.0", "---", "names:", f'   - "{name}"', f"R_{name}: {_yaml_mat(3, 1, Rvec)}"]
    if Rot is not None:
        extri.append(f"Rot_{name}: {_yaml_mat(3, 3, Rot)}")
    extri.append(f"T_{name}: {_yaml_mat(3, 1, T)}")
    return "\n".join(intri) + "\n", "\n".join(extri) + "\n"


@FUZZ(60)
@given(pair=easymocap_pair(), garbage=st.one_of(st.none(), st.binary(max_size=200)))
def test_easymocap_reader_fuzzed(scratch, pair, garbage):
    from mvcap.rigio import load_rig

    folder = scratch / "easymocap"
    folder.mkdir(exist_ok=True)
    (folder / "intri.yml").write_text(pair[0])
    (folder / "extri.yml").write_text(pair[1]) if garbage is None else (folder / "extri.yml").write_bytes(garbage)
    _check_rig(_expect_only_own_errors(load_rig, folder))


# ---------------------------------------------------------------------------- XML rigs
attr_values = st.one_of(
    st.sampled_from(["0", "-0", "-1", "1e-300", "1e300", "nan", "inf", "-inf", "", "1 2", "x", "1e999"]),
    numbers.map(lambda v: repr(float(v)) if isinstance(v, float) else str(v)),
    st.text(max_size=6),
)


def _attrs(d: dict) -> str:
    return " ".join(f"{k}={quoteattr(v)}" for k, v in d.items() if v is not None)


def _xml_text(s: str) -> str:
    """Only characters XML 1.0 allows in attribute values."""
    return "".join(
        c for c in s if c in "\t\n\r" or (" " <= c and c not in "\ufffe\uffff" and not 0xD800 <= ord(c) < 0xE000)
    )


def _fuzz_attrs(draw, valid: dict) -> dict:
    out = {}
    for k, v in valid.items():
        choice = draw(st.integers(0, 4))
        out[k] = None if choice == 0 else _xml_text(draw(attr_values)) if choice == 1 else v
    return out


@st.composite
def qualisys_file(draw):
    r = dict(zip([f"r{i}{j}" for i in (1, 2, 3) for j in (1, 2, 3)], "1 0 0 0 -1 0 0 0 -1".split()))
    cams = []
    for i in range(draw(st.integers(1, 2))):
        fov = _fuzz_attrs(draw, {"left": "0", "top": "0", "right": "1919", "bottom": "1079"})
        tr = _fuzz_attrs(draw, {"x": "0", "y": "0", "z": "3000", **r})
        it = _fuzz_attrs(draw, {
            "focalLengthU": "96000", "focalLengthV": "96000", "centerPointU": "61440", "centerPointV": "34560",
            "sensorMinU": "0", "sensorMaxU": "122879", "skew": "0", "radialDistortion1": "0.01",
            "tangentalDistortion1": "0",
        })  # fmt: skip
        fmax = _fuzz_attrs(draw, {"left": "0", "right": "1919"})
        cams.append(
            f'<camera serial="{i}" model="Miqus Video" viewrotation="0"><fov_video {_attrs(fov)}/>'
            f"<fov_video_max {_attrs(fmax)}/><transform {_attrs(tr)}/><intrinsic {_attrs(it)}/></camera>"
        )
    return '<?xml version="1.0"?><calibration><cameras>' + "".join(cams) + "</cameras></calibration>"


@st.composite
def vicon_file(draw):
    cams = []
    for i in range(draw(st.integers(1, 2))):
        cam = _fuzz_attrs(draw, {"PIXEL_ASPECT_RATIO": "1.0", "SENSOR_SIZE": "1920 1080", "SKEW": "0"})
        kf = _fuzz_attrs(draw, {
            "FOCAL_LENGTH": "1400", "ORIENTATION": "0 0 0 1", "POSITION": "0 0 -3000", "PRINCIPAL_POINT": "958 542",
            "VICON_RADIAL2": "ThirdOrderRadial 958 542 0.01 0.001 0",
        })  # fmt: skip
        cams.append(
            f'<Camera DEVICEID="{i}" TYPE="VideoInputDevice" {_attrs(cam)}><KeyFrames>'
            f"<KeyFrame {_attrs(kf)}/></KeyFrames></Camera>"
        )
    return '<?xml version="1.0"?><Cameras VERSION="1.0">' + "".join(cams) + "</Cameras>"


@FUZZ(150)
@given(text=qualisys_file(), size=st.one_of(st.none(), st.tuples(st.integers(-2, 3000), st.integers(-2, 3000))))
def test_qualisys_reader_fuzzed(scratch, text, size):
    from mvcap.rigio import load_rig

    path = scratch / "calib.qca.txt"
    path.write_text(text, encoding="utf-8")
    _check_rig(_expect_only_own_errors(load_rig, path, image_size=size))


@FUZZ(150)
@given(text=vicon_file())
def test_vicon_reader_fuzzed(scratch, text):
    from mvcap.rigio import load_rig

    path = scratch / "calib.xcp"
    path.write_text(text, encoding="utf-8")
    _check_rig(_expect_only_own_errors(load_rig, path))


@FUZZ(100)
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".xcp", ".qca.txt"]))
def test_xml_rig_readers_arbitrary_bytes(scratch, data, suffix):
    from mvcap.rigio import load_rig

    path = scratch / f"raw{suffix}"
    path.write_bytes(data)
    _check_rig(_expect_only_own_errors(load_rig, path))


# -------------------------------------------------------------------------- npz init
npz_dtypes = st.sampled_from(["f8", "f4", "f2", "i4", "u1", "bool", "c16", "c8", "U3", "S2"])


@st.composite
def _array(draw, shape):
    """One drawn value everywhere and maybe a second one somewhere: fast to generate, and
    NaN/inf/text/complex values still reach the reader."""
    dt = np.dtype(draw(npz_dtypes))
    a = np.full(shape, draw(hnp.from_dtype(dt)), dt)
    if a.size and draw(st.booleans()):
        a.flat[draw(st.integers(0, a.size - 1))] = draw(hnp.from_dtype(dt))
    return a


@st.composite
def npz_content(draw):
    T = draw(st.integers(0, 3))
    shapes = {
        "poses": st.one_of(st.just((T, 72)), hnp.array_shapes(min_dims=0, max_dims=3, max_side=4)),
        "pose_rotvecs": st.one_of(st.just((T, 24, 3)), hnp.array_shapes(min_dims=1, max_dims=3, max_side=3)),
        "trans": st.one_of(st.just((T, 3)), hnp.array_shapes(min_dims=0, max_dims=2, max_side=4)),
        "transl": st.just((T, 3)),
        "betas": st.one_of(st.just((10,)), st.just((T, 12)), hnp.array_shapes(min_dims=0, max_dims=2, max_side=11)),
    }
    keys = draw(st.lists(st.sampled_from(sorted(shapes)), unique=True, max_size=5))
    return {k: draw(_array(draw(shapes[k]))) for k in keys}


@FUZZ(100)
@given(content=npz_content(), num_frames=st.one_of(st.none(), st.integers(0, 4)))
def test_npz_init_reader_fuzzed(scratch, content, num_frames):
    from mvcap.initialize import load_npz_init

    path = scratch / "init.npz"
    np.savez(path, **content)
    params = _expect_only_own_errors(load_npz_init, path, num_frames)
    if params is not None:
        T = params.pose_rotvecs.shape[0]
        assert T > 0 and params.pose_rotvecs.shape == (T, 24, 3) and params.transl.shape == (T, 3)
        for a in (params.pose_rotvecs, params.betas, params.transl):
            assert np.all(np.isfinite(a)) and np.isrealobj(a)


@FUZZ(100)
@given(data=st.binary(max_size=400))
def test_npz_init_reader_arbitrary_bytes(scratch, data):
    from mvcap.initialize import load_npz_init

    path = scratch / "raw.npz"
    path.write_bytes(data)
    _expect_only_own_errors(load_npz_init, path)


# ---------------------------------------------------------------------------- configs
def _config_dict(cls, draw, depth=0) -> dict:
    """Settings named like the config's real fields (and a stray one), arbitrary values."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if not draw(st.booleans()):
            continue
        if dataclasses.is_dataclass(hints[f.name]) and depth < 2 and draw(st.booleans()):
            out[f.name] = _config_dict(hints[f.name], draw, depth + 1)
        else:
            out[f.name] = draw(values)
    if draw(st.integers(0, 9)) == 0:
        out["not_a_setting"] = 1
    return out


def _config_classes():
    from mvcap.initialize import InitConfig
    from mvcap.nets.train import TrainConfig
    from mvcap.pipeline import RunConfig
    from mvcap.refine import RefineConfig

    return [InitConfig, RefineConfig, TrainConfig, RunConfig]


@FUZZ(80)
@given(data=st.data(), which=st.integers(0, 3))
def test_config_reader_fuzzed_values(scratch, data, which):
    from mvcap.config import load_config

    cls = _config_classes()[which]
    settings_ = _config_dict(cls, data.draw)
    tables = {k: v for k, v in settings_.items() if isinstance(v, dict)}
    plain = {k: v for k, v in settings_.items() if not isinstance(v, dict)}
    path = scratch / "config.toml"
    path.write_text(_toml_doc({**plain, **tables}), encoding="utf-8")
    cfg = _expect_only_own_errors(load_config, cls, path)
    if cfg is not None:
        _check_types(cfg)


def _check_types(cfg) -> None:
    """A config that loads holds values of its declared types (no text where a number belongs)."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value, tp = getattr(cfg, f.name), hints[f.name]
        if dataclasses.is_dataclass(value):
            _check_types(value)
        elif tp is float:
            assert isinstance(value, float) and not math.isnan(value), (f.name, value)
        elif tp is int:
            assert isinstance(value, int) and not isinstance(value, bool), (f.name, value)
        elif tp in (str, bool):
            assert isinstance(value, tp), (f.name, value)
        elif typing.get_origin(tp) is tuple:
            assert isinstance(value, tuple), (f.name, value)


@FUZZ(100)
@given(data=st.binary(max_size=300), overrides=st.lists(st.text(max_size=12), max_size=3))
def test_config_reader_arbitrary_bytes_and_overrides(scratch, data, overrides):
    from mvcap.config import load_config
    from mvcap.initialize import InitConfig

    path = scratch / "raw_config.toml"
    path.write_bytes(data)
    _expect_only_own_errors(load_config, InitConfig, path)
    _expect_only_own_errors(load_config, InitConfig, None, overrides)
