"""Export round trips: every format is read back by code that is not the writer's (numpy
parsing, a hand-written BVH forward kinematics, bvhio, pygltflib, trimesh) and compared with
the body model."""

import csv
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from mvcap.cameras import Camera, Rig
from mvcap.capture import BodyParams, Session
from mvcap.export import (
    ExportError,
    export_bvh,
    export_easymocap_json,
    export_glb,
    export_joints_csv,
    export_meshes,
    export_npz,
    export_session,
    export_trc,
)
from mvcap.subject import Subject

T, FPS = 5, 25.0
MM = 1e-3


def make_params(n=T, seed=0):
    rng = np.random.default_rng(seed)
    pose = rng.normal(size=(n, 24, 3)) * 0.35
    pose[:, 0] = rng.normal(size=(n, 3)) * 1.2  # large global rotations
    betas = np.broadcast_to(rng.normal(size=10) * 0.8, (n, 10))
    transl = rng.normal(size=(n, 3)) + np.array([0.0, 1.0, 0.0])
    return BodyParams(pose.astype(np.float32), betas.astype(np.float32), transl.astype(np.float32))


def posed(model, params, betas=None):
    b = params.betas if betas is None else np.broadcast_to(betas, params.betas.shape)
    with torch.no_grad():
        out = model(
            torch.as_tensor(params.pose_rotvecs, dtype=torch.float64),
            torch.as_tensor(np.asarray(b), dtype=torch.float64),
            torch.as_tensor(params.transl, dtype=torch.float64),
        )
    return out.vertices.numpy(), out.joints.numpy()


@pytest.fixture(scope="module")
def params():
    return make_params()


@pytest.fixture(scope="module")
def truth(body_model, params):
    return posed(body_model, params)


@pytest.fixture(scope="module")
def shifted_model(tmp_path_factory):
    """The embedded body with its rest pose moved so that the root joint J0 sits far from the
    origin (as in SMPL, J0 ~ (0, -0.2, 0)): the embedded body has J0 ~ 0, which would hide a
    wrong J0 term in the conventions."""
    from mvcap.body import BodyModel, default_body_model_path, load_model_arrays

    arrays = {k: v for k, v in load_model_arrays(default_body_model_path()).items() if isinstance(v, np.ndarray)}
    arrays["v_template"] = arrays["v_template"] + np.array([0.05, -0.25, 0.03], np.float32)
    path = tmp_path_factory.mktemp("shifted") / "shifted_body.npz"
    np.savez(path, **arrays)
    model = BodyModel(path)
    assert np.linalg.norm(model.rest_joints()[0, 0].numpy()) > 0.2
    return model


@pytest.fixture(params=["embedded", "shifted"])
def model_and_truth(request, body_model, shifted_model, params, truth):
    """(model, (vertices, joints)) for the embedded body and the shifted one."""
    if request.param == "embedded":
        return body_model, truth
    return shifted_model, posed(shifted_model, params)


# ----------------------------------------------------------------------------- npz
def test_npz_round_trip(tmp_path, body_model, params, truth):
    p = export_npz(tmp_path / "a.npz", params, FPS, gender="female", model=body_model)
    d = np.load(p)
    assert d["poses"].shape == (T, 72) and d["trans"].shape == (T, 3) and d["betas"].shape == (10,)
    assert str(d["gender"]) == "female" and float(d["mocap_framerate"]) == FPS
    np.testing.assert_array_equal(d["root_orient"], d["poses"][:, :3])
    np.testing.assert_array_equal(np.concatenate([d["root_orient"], d["pose_body"], d["pose_hand"]], 1), d["poses"])
    note = str(d["note"])
    assert "NOT SMPL's mesh" in note and "J0 + trans" in note
    reimported = BodyParams(d["poses"].reshape(T, 24, 3), d["betas"], d["trans"])
    _, joints = posed(body_model, reimported)
    assert np.abs(joints - truth[1]).max() <= MM
    assert np.abs(d["joints"] - truth[1]).max() <= MM


# ----------------------------------------------------------------------------- EasyMocap
def test_easymocap_convention(tmp_path, model_and_truth, params):
    body_model, truth = model_and_truth
    paths = export_easymocap_json(tmp_path / "em", params, model=body_model, frame_ids=np.arange(10, 10 + T))
    assert [p.name for p in paths] == [f"{k:06d}.json" for k in range(10, 10 + T)]
    readme = (tmp_path / "em" / "README.txt").read_text()
    assert "Th = transl + J0 - Rh J0" in readme
    for k, p in enumerate(paths):
        (person,) = json.loads(p.read_text())
        assert person["id"] == 0 and len(person["poses"][0]) == 72 and len(person["shapes"][0]) == 10
        rh, th = np.array(person["Rh"][0]), np.array(person["Th"][0])
        local_pose = np.array(person["poses"][0]).reshape(1, 24, 3)
        assert np.all(local_pose[0, 0] == 0)
        # EasyMocap's forward: body posed with zero global rotation and zero translation,
        # then X_world = Rh X + Th.
        local = BodyParams(local_pose, np.array(person["shapes"]), np.zeros((1, 3)))
        v_local, j_local = posed(body_model, local)
        R = Rotation.from_rotvec(rh).as_matrix()
        v_world = v_local[0] @ R.T + th
        j_world = j_local[0] @ R.T + th
        assert np.abs(v_world - truth[0][k]).max() <= MM
        assert np.abs(j_world - truth[1][k]).max() <= MM
        if np.linalg.norm(j_local[0, 0]) > 0.2:  # the J0 term matters
            naive = v_local[0] @ R.T + params.transl[k]  # Th = transl would be wrong
            assert np.abs(naive - truth[0][k]).max() > 10 * MM


# ----------------------------------------------------------------------------- BVH
def fk_bvh(text):
    """Minimal BVH reader + forward kinematics written for this test: returns joint names,
    world positions (F, J, 3) in file units, frame count and frame time."""
    tokens = text.split()
    names, parents, offsets, channels = [], [], [], []
    stack, i, end = [], 1, -1  # tokens[0] == HIERARCHY
    while tokens[i] != "MOTION":
        tok = tokens[i]
        if tok in ("ROOT", "JOINT"):
            names.append(tokens[i + 1])
            parents.append(stack[-1] if stack else -1)
            i += 2
        elif tok == "End":  # End Site { OFFSET x y z }
            i += 2 + 1 + 4 + 1
            continue
        elif tok == "{":
            stack.append(len(names) - 1)
            i += 1
        elif tok == "}":
            stack.pop()
            i += 1
        elif tok == "OFFSET":
            offsets.append([float(x) for x in tokens[i + 1 : i + 4]])
            i += 4
        elif tok == "CHANNELS":
            n = int(tokens[i + 1])
            channels.append(tokens[i + 2 : i + 2 + n])
            i += 2 + n
        else:
            raise AssertionError(f"unexpected token {tok}")
    assert tokens[i + 1] == "Frames:" and tokens[i + 3] == "Frame" and tokens[i + 4] == "Time:"
    nframes, frame_time = int(tokens[i + 2]), float(tokens[i + 5])
    data = np.array(tokens[i + 6 :], float).reshape(nframes, -1)
    assert end == -1 and data.shape[1] == sum(len(c) for c in channels)
    pos = np.zeros((nframes, len(names), 3))
    for f in range(nframes):
        col, world = 0, []
        for j in range(len(names)):
            vals = dict(zip(channels[j], data[f, col : col + len(channels[j])]))
            col += len(channels[j])
            order = "".join(c[0] for c in channels[j] if c.endswith("rotation"))
            R = Rotation.from_euler(order.upper(), [vals[f"{a}rotation"] for a in order], degrees=True).as_matrix()
            t = np.array(offsets[j])
            if "Xposition" in vals:
                t = np.array([vals["Xposition"], vals["Yposition"], vals["Zposition"]])
            M = np.eye(4)
            M[:3, :3], M[:3, 3] = R, t
            world.append(M if parents[j] < 0 else world[parents[j]] @ M)
            pos[f, j] = world[j][:3, 3]
    return names, pos, nframes, frame_time


@pytest.mark.parametrize("units,scale", [("cm", 100.0), ("m", 1.0)])
def test_bvh_forward_kinematics(tmp_path, model_and_truth, params, units, scale):
    body_model, truth = model_and_truth
    p = export_bvh(tmp_path / "a.bvh", params, body_model, params.betas[0], FPS, units=units)
    names, pos, nframes, frame_time = fk_bvh(p.read_text())
    assert len(names) == 24 and set(names) == set(body_model.joint_names)
    assert nframes == T and abs(frame_time - 1 / FPS) < 1e-6
    order = [names.index(n) for n in body_model.joint_names]
    err = np.abs(pos[:, order] / scale - truth[1]).max()
    assert err <= MM, f"BVH joints differ from the body model by {err * 1e3:.3f} mm"


def test_bvh_bvhio(tmp_path, body_model, params, truth):
    bvhio = pytest.importorskip("bvhio")
    p = export_bvh(tmp_path / "a.bvh", params, body_model, params.betas[0], FPS, units="cm")
    container = bvhio.readAsBvh(str(p))
    assert container.FrameCount == T and abs(container.FrameTime - 1 / FPS) < 1e-6
    root = bvhio.readAsHierarchy(str(p))
    joints = {j.Name: j for j, _, _ in root.layout()}
    assert len(joints) == 24
    for k in range(T):
        root.loadPose(k)
        got = np.array([list(joints[n].PositionWorld) for n in body_model.joint_names]) / 100.0
        assert np.abs(got - truth[1][k]).max() <= MM


# ----------------------------------------------------------------------------- GLB
def read_glb(path):
    """pygltflib for the structure, numpy for the accessors."""
    pygltflib = pytest.importorskip("pygltflib")
    g = pygltflib.GLTF2().load(str(path))
    blob = g.binary_blob()
    ncomp = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT4": 16}
    dtype = {5126: np.float32, 5121: np.uint8, 5123: np.uint16, 5125: np.uint32}

    def acc(i):
        a = g.accessors[i]
        v = g.bufferViews[a.bufferView]
        n = ncomp[a.type]
        start = (v.byteOffset or 0) + (a.byteOffset or 0)
        arr = np.frombuffer(blob, dtype[a.componentType], a.count * n, start)
        return arr.reshape(a.count, n) if n > 1 else arr

    return g, acc


def quat_to_mat(q):
    return Rotation.from_quat(q).as_matrix()  # glTF quaternions are (x, y, z, w)


@pytest.mark.parametrize("max_influences", [8, 4])
def test_glb_round_trip(tmp_path, model_and_truth, params, max_influences):
    body_model, truth = model_and_truth
    tex = np.zeros((8, 8, 3), np.uint8)
    tex[:4] = 255
    subject = Subject("s", params.betas[0], texture=tex)
    p = export_glb(tmp_path / "a.glb", params, body_model, fps=FPS, subject=subject, max_influences=max_influences)
    g, acc = read_glb(p)
    (skin,) = g.skins
    assert len(skin.joints) == 24
    assert [g.nodes[j].name for j in skin.joints] == list(body_model.joint_names)
    (anim,) = g.animations
    times = acc(anim.samplers[0].input)
    assert times.shape == (T,) and abs(times[-1] - (T - 1) / FPS) < 1e-6
    assert len(g.images) == 1 and g.images[0].mimeType == "image/png"

    prim = g.meshes[0].primitives[0]
    rest = acc(prim.attributes.POSITION).astype(np.float64)
    sets = [(acc(prim.attributes.JOINTS_0), acc(prim.attributes.WEIGHTS_0))]
    if getattr(prim.attributes, "JOINTS_1", None) is not None:
        sets.append((acc(prim.attributes.JOINTS_1), acc(prim.attributes.WEIGHTS_1)))
    assert len(sets) == max_influences // 4
    ibm = acc(skin.inverseBindMatrices).reshape(24, 4, 4).transpose(0, 2, 1)  # column-major
    faces = acc(prim.indices).reshape(-1, 3)
    uv = acc(prim.attributes.TEXCOORD_0)
    assert uv.shape == (len(rest), 2) and faces.max() < len(rest)

    # Which model vertex is each glTF vertex (UV seams duplicate vertices)?
    with torch.no_grad():
        template = body_model.template_vertices(torch.as_tensor(params.betas[:1], dtype=torch.float64))[0].numpy()
    dist, src = cKDTree(template).query(rest)
    assert dist.max() < 1e-5 and len(np.unique(src)) == body_model.num_vertices

    parent = {c: i for i, n in enumerate(g.nodes) for c in (n.children or [])}
    for k in range(T):
        local = {}
        for i, n in enumerate(g.nodes):
            M = np.eye(4)
            M[:3, 3] = n.translation or 0.0
            if n.rotation:
                M[:3, :3] = quat_to_mat(n.rotation)
            local[i] = M
        for ch in anim.channels:
            out = acc(anim.samplers[ch.sampler].output)[k].astype(np.float64)
            if ch.target.path == "rotation":
                local[ch.target.node][:3, :3] = quat_to_mat(out)
            elif ch.target.path == "translation":
                local[ch.target.node][:3, 3] = out
        world = {}

        def world_of(i, local=local, world=world):
            if i not in world:
                world[i] = local[i] if i not in parent else world_of(parent[i]) @ local[i]
            return world[i]

        joints_world = np.stack([world_of(j) for j in skin.joints])
        assert np.abs(joints_world[:, :3, 3] - truth[1][k]).max() <= MM
        skinmats = joints_world @ ibm  # (24, 4, 4)
        vh = np.c_[rest, np.ones(len(rest))]
        v = np.zeros((len(rest), 3))
        for jidx, w in sets:
            for c in range(4):
                v += w[:, c : c + 1] * np.einsum("nij,nj->ni", skinmats[jidx[:, c]], vh)[:, :3]
        err = np.abs(v - truth[0][k][src]).max()
        if max_influences == 8:
            assert err <= MM, f"skinned GLB differs from the body model by {err * 1e3:.3f} mm"
        else:  # truncated to 4 influences: approximate
            assert err <= 0.03


def test_glb_trimesh_loads(tmp_path, body_model, params):
    trimesh = pytest.importorskip("trimesh")
    p = export_glb(tmp_path / "a.glb", params, body_model, fps=FPS)
    scene = trimesh.load(str(p))
    (mesh,) = scene.geometry.values()
    assert len(mesh.faces) == body_model.faces.shape[0]


# ----------------------------------------------------------------------------- meshes, csv
def test_meshes_and_csv(tmp_path, body_model, params, truth):
    ids = np.arange(100, 100 + T)
    objs = export_meshes(tmp_path / "m", params, body_model, "obj", frames=[1, 3], frame_ids=ids)
    assert [o.name for o in objs] == ["mesh_000101.obj", "mesh_000103.obj"]
    v = np.array([line.split()[1:] for line in objs[1].read_text().splitlines() if line.startswith("v ")], float)
    assert np.abs(v - truth[0][3]).max() <= MM
    (ply,) = export_meshes(tmp_path / "m", params, body_model, "ply", frames=[2], frame_ids=ids)
    data = ply.read_bytes()
    head, body = data.split(b"end_header\n", 1)
    n = body_model.num_vertices
    assert f"element vertex {n}".encode() in head
    vp = np.frombuffer(body, "<f4", n * 3).reshape(n, 3)
    assert np.abs(vp - truth[0][2]).max() <= MM
    assert struct.unpack_from("<B3i", body, n * 12)[0] == 3

    c = export_joints_csv(tmp_path / "j.csv", params, body_model, fps=FPS, frame_ids=ids)
    rows = list(csv.DictReader(c.open()))
    assert len(rows) == T and float(rows[-1]["time"]) == pytest.approx(ids[-1] / FPS)
    got = np.array([[float(r[f"{nm}_{a}"]) for nm in body_model.joint_names for a in "xyz"] for r in rows])
    assert np.abs(got.reshape(T, 24, 3) - truth[1]).max() <= MM


# ----------------------------------------------------------------------------- sessions
def make_session(path, params, done):
    K = np.array([[20.0, 0, 8], [0, 20.0, 6], [0, 0, 1]])
    rig = Rig((Camera("cam0", K, np.zeros(5), np.eye(3), np.array([0.0, 0.0, 3.0]), (16, 12)),))
    with Session.create(path, rig, num_frames=len(done), fps=FPS) as s:
        s.write_subject(Subject("s", params.betas[0], gender="male"))
        w = s.results_run("fit", config={"a": 1})
        for t in np.flatnonzero(done):
            w.write(int(t), params.pose_rotvecs[t], params.betas[t], params.transl[t])
    return path


def test_export_session(tmp_path, body_model):
    params = make_params(8, seed=1)
    done = np.array([0, 1, 1, 1, 1, 0, 1, 1], bool)
    path = make_session(tmp_path / "s.h5", params, done)
    out = export_session(path, "fit", tmp_path / "out", formats=("npz", "json", "bvh", "glb", "csv", "obj"),
                         frames="1:5", model=body_model)  # fmt: skip
    assert out.frames.tolist() == [1, 2, 3, 4]
    assert set(out.paths) == {"npz", "json", "bvh", "glb", "csv", "obj"}
    d = np.load(out.paths["npz"])
    assert d["frame_indices"].tolist() == [1, 2, 3, 4] and str(d["gender"]) == "male"
    assert sorted(p.name for p in out.paths["json"].glob("*.json")) == [f"{k:06d}.json" for k in (1, 2, 3, 4)]
    _, pos, nframes, _ = fk_bvh(out.paths["bvh"].read_text())
    _, joints = posed(body_model, params.slice([1, 2, 3, 4]))
    # a session that records no up axis is Y-up, BVH's convention: no rotation; BVH in metres
    assert nframes == 4 and np.abs(pos[:, 0] - joints[:, 0]).max() <= MM
    assert out.runs == ((1, 4),) and out.conventions["bvh"] == ("+y", "m") and out.conventions["npz"] == ("+z", "m")

    # Per-frame formats take gappy done frames; animations get one file per contiguous run.
    out = export_session(path, "fit", tmp_path / "out2", formats=("csv", "bvh"), model=body_model)
    assert out.frames.tolist() == [1, 2, 3, 4, 6, 7] and out.runs == ((1, 4), (6, 7))
    assert len(list(csv.DictReader(out.paths["csv"].open()))) == 6
    files = sorted(p.name for p in out.paths["bvh"].glob("*.bvh"))
    assert files == ["fit_000001-000004.bvh", "fit_000006-000007.bvh"]
    _, pos, nframes, _ = fk_bvh((out.paths["bvh"] / files[1]).read_text())
    _, joints = posed(body_model, params.slice([6, 7]))
    assert nframes == 2 and np.abs(pos[:, 0] - joints[:, 0]).max() <= MM


def test_export_errors(tmp_path, body_model, params):
    p = make_params(4)
    path = make_session(tmp_path / "s.h5", p, np.array([0, 1, 1, 0], bool))
    with pytest.raises(ExportError, match=r"'fit'.*2:4.*3.*not done.*1-2"):
        export_session(path, "fit", tmp_path / "o", frames="2:4", model=body_model)
    with pytest.raises(ExportError, match=r"no results run 'nope'.*\['fit'\]"):
        export_session(path, "nope", tmp_path / "o", model=body_model)
    with pytest.raises(ExportError, match=r"asks for frame\(s\) 4:9 but the session has 4 frames"):
        export_session(path, "fit", tmp_path / "o", frames="2:9", model=body_model)
    with pytest.raises(ExportError, match="unknown export format"):
        export_session(path, "fit", tmp_path / "o", formats=("fbx",), model=body_model)
    with pytest.raises(ExportError, match="START 'x' is not a frame number"):
        export_session(path, "fit", tmp_path / "o", frames="x:y", model=body_model)
    empty = make_session(tmp_path / "e.h5", p, np.zeros(4, bool))
    with pytest.raises(ExportError, match=r"'fit'.*no done frames"):
        export_session(empty, "fit", tmp_path / "o", model=body_model)
    with pytest.raises(ExportError, match="NaN"):
        export_bvh(tmp_path / "x.bvh", BodyParams.nan(2), body_model)
    assert isinstance(ExportError("x"), ValueError)


# ----------------------------------------------------------------------------- biomechanics
def read_trc_pose2sim(path):
    """TRC read back with Pose2Sim's own rules (its ``extract_trc_data``): marker names from
    line 4 at tab fields 2::3, data from line 6 on; plus the header values by name."""
    lines = path.read_text().splitlines()
    names = lines[3].strip().split("\t")[2::3]
    header = dict(zip(lines[1].split("\t"), lines[2].split("\t"), strict=True))
    data = np.genfromtxt(path, skip_header=5, delimiter="\t")
    return names, header, data


def expected_points(model, params):
    from mvcap.markers import anatomical_markers

    verts, joints = posed(model, params)
    ms = anatomical_markers(model)
    return list(model.joint_names) + list(ms.names), np.concatenate([joints, verts[:, ms.vertex_ids]], 1)


@pytest.mark.parametrize("units,scale", [("m", 1.0), ("mm", 1000.0)])
def test_trc_read_back(tmp_path, body_model, params, units, scale):
    ids = np.arange(40, 40 + T)
    p = export_trc(tmp_path / "a.trc", params, body_model, FPS, frame_ids=ids, units=units)
    names, header, data = read_trc_pose2sim(p)
    want_names, want = expected_points(body_model, params)
    assert names == want_names and len(names) == 24 + 39
    assert header["Units"] == units and float(header["DataRate"]) == FPS
    assert int(header["NumFrames"]) == T and int(header["NumMarkers"]) == len(names)
    assert data.shape == (T, 2 + 3 * len(names))
    assert data[:, 0].tolist() == ids.tolist() and np.allclose(data[:, 1], ids / FPS)
    assert np.abs(data[:, 2:].reshape(T, -1, 3) / scale - want).max() <= MM
    # Pandas, as OpenSim users often read it: the X1/Y1/Z1 row as header
    pd = pytest.importorskip("pandas")
    df = pd.read_csv(p, sep="\t", skiprows=4)
    assert np.abs(df[["X1", "Y1", "Z1"]].to_numpy() / scale - want[:, 0]).max() <= MM


def test_c3d_read_back_with_ezc3d(tmp_path, body_model, params):
    pytest.importorskip("c3d")  # the writer
    ezc3d = pytest.importorskip("ezc3d")  # an independent reader (C++ library)
    from mvcap.export import export_c3d

    p = export_c3d(tmp_path / "a.c3d", params, body_model, FPS, frame_ids=np.arange(7, 7 + T))
    c = ezc3d.c3d(str(p))
    point = c["parameters"]["POINT"]
    want_names, want = expected_points(body_model, params)
    assert [n.strip() for n in point["LABELS"]["value"]] == want_names
    assert point["UNITS"]["value"][0].strip() == "mm" and float(point["RATE"]["value"][0]) == FPS
    assert c["header"]["points"]["first_frame"] == 7  # ezc3d counts from 0, the file from 1
    pts = c["data"]["points"]  # (4, P, T) homogeneous, mm
    assert pts.shape == (4, len(want_names), T)
    assert np.abs(pts[:3].transpose(2, 1, 0) / 1000.0 - want).max() <= MM


def test_markers_follow_the_skin(body_model):
    from mvcap.markers import anatomical_markers

    ms = anatomical_markers(body_model)
    assert len(set(ms.names)) == len(ms.names) == 39 and len(set(ms.vertex_ids.tolist())) == 39
    assert anatomical_markers(body_model).vertex_ids.tolist() == ms.vertex_ids.tolist()  # deterministic
    with torch.no_grad():
        v = body_model.template_vertices()[0].numpy()
    P = dict(zip(ms.names, v[ms.vertex_ids], strict=True))
    # anatomy in the rest pose (+X left, +Y up, +Z forward)
    assert P["LASIS"][0] > 0 > P["RASIS"][0] and P["LASIS"][2] > P["LPSIS"][2]
    assert P["HEAD_TOP"][1] > P["C7"][1] > P["LASIS"][1] > P["LKNE_LAT"][1] > P["LANK_LAT"][1] > P["LHEEL"][1]
    assert P["LKNE_LAT"][0] > P["LKNE_MED"][0] and P["RKNE_LAT"][0] < P["RKNE_MED"][0]
    assert P["LANK_LAT"][0] > P["LANK_MED"][0] and P["LTOE"][2] > P["LHEEL"][2] + 0.15
    assert P["CLAV"][2] > 0 > P["C7"][2] and abs(P["LACR"][0] - P["RACR"][0]) > 0.25
    docs = (Path(__file__).resolve().parents[1] / "docs" / "markers.md").read_text()
    for n, i in zip(ms.names, ms.vertex_ids, strict=True):
        assert f"| `{n}` | {int(i)} |" in docs, f"docs/markers.md is stale for {n}; run python -m mvcap.markers"


# ----------------------------------------------------------------------------- conventions
def standing_params(n=3, seed=2):
    """A person standing upright in mvcap's Y-up world (small joint rotations, pelvis ~0.95 m)."""
    rng = np.random.default_rng(seed)
    pose = rng.normal(size=(n, 24, 3)) * 0.1
    pose[:, 0] = 0.0
    pose[:, 0, 1] = rng.uniform(-np.pi, np.pi, n)  # turned about the vertical
    transl = np.c_[rng.normal(size=n) * 0.3, np.full(n, 0.95), rng.normal(size=n) * 0.3]
    betas = np.zeros((n, 10))
    return BodyParams(pose.astype(np.float32), betas.astype(np.float32), transl.astype(np.float32))


def test_up_rotation_and_rotate_world(shifted_model, params):
    from mvcap.export import rotate_world, up_rotation

    axes = ["+x", "-x", "+y", "-y", "+z", "-z"]
    for a in axes:
        for b in axes:
            R = up_rotation(a, b)
            assert np.allclose(R @ R.T, np.eye(3)) and np.isclose(np.linalg.det(R), 1.0)
            ea, eb = (np.eye(3)[" xyz".index(u[1]) - 1] * (1 if u[0] == "+" else -1) for u in (a, b))
            assert np.allclose(R @ ea, eb)
    R = up_rotation("z", "+y")
    assert np.allclose(R @ [1, 2, 3], [1, 3, -2])  # (x, y, z) -> (x, z, -y)
    # the rotated parameters pose the rotated body (the J0 term matters for the shifted model)
    v, j = posed(shifted_model, params)
    v2, j2 = posed(shifted_model, rotate_world(params, R, shifted_model))
    assert np.abs(v2 - v @ R.T).max() <= MM and np.abs(j2 - j @ R.T).max() <= MM


def glb_joints(path, k=0):
    """World joint positions (24, 3) of frame k of a GLB, by forward kinematics of its nodes."""
    g, acc = read_glb(path)
    (skin,) = g.skins
    (anim,) = g.animations
    parent = {c: i for i, n in enumerate(g.nodes) for c in (n.children or [])}
    local = {}
    for i, n in enumerate(g.nodes):
        M = np.eye(4)
        M[:3, 3] = n.translation or 0.0
        local[i] = M
    for ch in anim.channels:
        out = acc(anim.samplers[ch.sampler].output)[k].astype(np.float64)
        if ch.target.path == "rotation":
            local[ch.target.node][:3, :3] = quat_to_mat(out)
        else:
            local[ch.target.node][:3, 3] = out

    def world(i):
        return local[i] if i not in parent else world(parent[i]) @ local[i]

    return np.stack([world(j)[:3, 3] for j in skin.joints])


def test_zup_session_exports_in_each_convention(tmp_path, body_model):
    """A Z-up world (Qualisys/Vicon/Pose2Sim): the GLB/BVH/TRC come out +Y-up (the head above
    the feet along Y), the npz/C3D stay Z-up, and everything is the same body."""
    from mvcap.export import up_rotation

    upright = standing_params()
    R = up_rotation("+y", "+z")
    from mvcap.export import rotate_world

    zup = rotate_world(upright, R, body_model)  # the same person in a Z-up world
    _, j_zup = posed(body_model, zup)
    assert (j_zup[:, 15, 2] - j_zup[:, 7, 2] > 1.0).all()  # standing along +Z
    path = make_session(tmp_path / "z.h5", zup, np.ones(len(zup), bool))
    with Session.open(path, "a") as s:
        s.set_world_convention("z")
    fmts = ("glb", "bvh", "trc", "npz", "csv", "json") + (("c3d",) if _has("c3d") else ())
    out = export_session(path, "fit", tmp_path / "out", formats=fmts, model=body_model)
    assert out.world_up == "+z" and out.conventions["glb"] == ("+y", "m") and out.conventions["csv"] == ("+z", "m")
    R_back = up_rotation("+z", "+y")
    for k in range(len(zup)):
        jg = glb_joints(out.paths["glb"], k)
        assert jg[15, 1] - max(jg[7, 1], jg[8, 1]) > 1.0, "GLB is not upright: glTF is +Y up"
        assert np.abs(jg - j_zup[k] @ R_back.T).max() <= MM
    _, pos, _, _ = fk_bvh(out.paths["bvh"].read_text())
    assert (pos[:, 15, 1] - pos[:, 7, 1] > 1.0).all()
    names, header, data = read_trc_pose2sim(out.paths["trc"])
    xyz = data[:, 2:].reshape(len(zup), -1, 3)
    assert (xyz[:, names.index("HEAD_TOP"), 1] - xyz[:, names.index("LHEEL"), 1] > 1.2).all()  # OpenSim: Y up
    d = np.load(out.paths["npz"])
    assert np.abs(d["joints"] - j_zup).max() <= MM  # AMASS: Z up, the session's own frame here
    assert str(d["up_axis"]) == "+z" and "+z up" in str(d["note"])
    assert "+z up" in (out.paths["json"] / "README.txt").read_text()  # EasyMocap: the session world
    if "c3d" in out.paths:
        pytest.importorskip("ezc3d")
        import ezc3d

        pts = ezc3d.c3d(str(out.paths["c3d"]))["data"]["points"][:3].transpose(2, 1, 0) / 1000.0
        assert np.abs(pts[:, :24] - j_zup).max() <= MM  # C3D: Z up, mm
    # pygltflib loads the file and its structure is intact
    g, acc = read_glb(out.paths["glb"])
    assert len(g.skins[0].joints) == 24 and len(g.animations) == 1
    # --up overrides every format's convention
    out = export_session(path, "fit", tmp_path / "o2", formats=("glb", "trc"), model=body_model, up="z", units="mm")
    jg = glb_joints(out.paths["glb"], 0)
    assert np.abs(jg - j_zup[0]).max() <= MM and out.conventions == {"glb": ("+z", "m"), "trc": ("+z", "mm")}


def _has(module):
    import importlib.util

    return importlib.util.find_spec(module) is not None


def test_glb_four_influences_by_default(tmp_path, body_model, params):
    p = export_glb(tmp_path / "a.glb", params, body_model, fps=FPS)
    g, acc = read_glb(p)
    prim = g.meshes[0].primitives[0]
    assert getattr(prim.attributes, "JOINTS_1", None) is None
    w = acc(prim.attributes.WEIGHTS_0).astype(np.float64)
    jidx = acc(prim.attributes.JOINTS_0)
    assert np.allclose(w.sum(1), 1.0, atol=1e-6)
    rest = acc(prim.attributes.POSITION).astype(np.float64)
    with torch.no_grad():
        template = body_model.template_vertices(torch.as_tensor(params.betas[:1], dtype=torch.float64))[0].numpy()
    _, src = cKDTree(template).query(rest)
    full = body_model.weights.numpy()[src]
    top4 = np.sort(full, 1)[:, ::-1][:, :4]
    assert np.allclose(np.sort(w, 1)[:, ::-1], top4 / top4.sum(1, keepdims=True), atol=1e-6)
    assert np.allclose(np.take_along_axis(full, jidx.astype(np.int64), 1)[w > 0], (full[np.arange(len(src))[:, None],
                       jidx.astype(np.int64)])[w > 0])  # fmt: skip
    with pytest.raises(ExportError, match="max_influences"):
        export_glb(tmp_path / "b.glb", params, body_model, max_influences=9)


def upright_camera(name, heading, up="+z", portrait=False, tilt=0.3):
    """A camera looking along ``heading`` (radians about the up axis), tilted down by ``tilt``,
    image up = world up (portrait: turned 90 degrees in its image plane)."""
    from mvcap.export import up_rotation

    R_zy = up_rotation("+z", up)  # build in a Z-up world, then turn the world
    f = np.array([np.cos(heading) * np.cos(tilt), np.sin(heading) * np.cos(tilt), -np.sin(tilt)])
    x = np.cross(f, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    y = np.cross(f, x)
    R = np.stack([y, -x, f]) if portrait else np.stack([x, y, f])
    K = np.array([[20.0, 0, 8], [0, 20.0, 6], [0, 0, 1]])
    return Camera(name, K, np.zeros(5), R @ R_zy.T, np.zeros(3), (16, 12))


def test_session_world_up_from_rig_files(tmp_path):
    from mvcap.capture import SessionError
    from mvcap.rigio import cameras_up_axis, rig_world_up, save_rig

    K = np.array([[20.0, 0, 8], [0, 20.0, 6], [0, 0, 1]])
    rig = Rig((Camera("cam0", K, np.zeros(5), np.eye(3), np.array([0.0, 0.0, 3.0]), (16, 12)),))
    save_rig(rig, tmp_path / "a.toml", up="+z")
    save_rig(rig, tmp_path / "b.toml")
    assert rig_world_up(tmp_path / "a.toml") == "+z" and rig_world_up(tmp_path / "b.toml") is None
    (tmp_path / "p2s.toml").write_text((tmp_path / "b.toml").read_text().replace('written_by = "mvcap"', ""))
    assert rig_world_up(tmp_path / "p2s.toml") == "+z"  # Pose2Sim / anipose floor worlds
    assert rig_world_up(tmp_path / "x.qca.txt") == "+z"
    # without a record, the cameras' layout says where up is: a ring of upright cameras
    for up, portrait, want in (("+z", False, "+z"), ("-y", False, "-y"), ("+z", True, None)):
        ring = Rig(tuple(upright_camera(f"c{i}", 2 * np.pi * i / 5 + 0.2, up, portrait) for i in range(5)))
        assert cameras_up_axis(ring) == want, (up, portrait)
        save_rig(ring, tmp_path / "ring.toml")
        assert rig_world_up(tmp_path / "ring.toml") == want  # an mvcap TOML without an up record
    with Session.create(tmp_path / "s.h5", rig, num_frames=1) as s:
        assert s.world_up is None and s.world_units == "m"
        s.set_world_convention("-y")
        with pytest.raises(SessionError, match="up axis"):
            s.set_world_convention("up")
    with Session.open(tmp_path / "s.h5") as s:
        assert s.world_up == "-y"


def test_ingest_records_the_rig_files_up_axis(tmp_path):
    from mvcap.ingest import export_frames, ingest
    from mvcap.rigio import save_rig

    K = np.array([[20.0, 0, 8], [0, 20.0, 6], [0, 0, 1]])
    rig = Rig(tuple(Camera(f"cam{i}", K, np.zeros(5), np.eye(3), np.array([i, 0.0, 3.0]), (16, 12)) for i in range(2)))
    with Session.create(tmp_path / "src.h5", rig, num_frames=2) as s:
        for t in range(2):
            s.write_frame(t, np.full((2, 12, 16, 3), 40 * t, np.uint8))
        s.mark_complete()
    exp = export_frames(tmp_path / "src.h5", tmp_path / "png", format="png")
    ingest(tmp_path / "png", exp.rig_path, tmp_path / "y.h5", progress=False)  # an mvcap rig without up
    save_rig(rig, tmp_path / "z.toml", up="+z")  # e.g. `mvcap calibrate --world-frame N --up z`
    ingest(tmp_path / "png", tmp_path / "z.toml", tmp_path / "z.h5", progress=False)
    ingest(tmp_path / "png", tmp_path / "z.toml", tmp_path / "x.h5", progress=False, world_up="-x")
    ups = []
    for name in ("y", "z", "x"):
        with Session.open(tmp_path / f"{name}.h5") as s:
            ups.append(s.world_up)
    assert ups == [None, "+z", "-x"]


def test_rig_convert_keeps_the_up_axis(tmp_path):
    from mvcap.cli import main
    from mvcap.rigio import rig_world_up

    em = Path(__file__).resolve().parents[1] / "calibration" / "examples" / "easymocap"
    res = CliRunner().invoke(main, ["rig", "convert", str(em), str(tmp_path / "r.toml")])
    assert res.exit_code == 0, res.output
    # the example is the demo rig (Y-up) in EasyMocap's format: its upright cameras say +Y, which
    # the converted TOML keeps in [metadata]
    assert rig_world_up(em) == "+y" and rig_world_up(tmp_path / "r.toml") == "+y"
    assert 'up = "+y"' in (tmp_path / "r.toml").read_text()
    demo = Path(__file__).resolve().parents[1] / "calibration" / "demo_rig.toml"
    assert rig_world_up(demo) == "+y"
