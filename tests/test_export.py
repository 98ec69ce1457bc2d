"""Export round trips: every format is read back by code that is not the writer's (numpy
parsing, a hand-written BVH forward kinematics, bvhio, pygltflib, trimesh) and compared with
the body model."""

import csv
import json
import struct

import numpy as np
import pytest
import torch
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
    p = export_bvh(tmp_path / "a.bvh", params, body_model, params.betas[0], FPS)
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
    assert nframes == 4 and np.abs(pos[:, 0] / 100 - joints[:, 0]).max() <= MM

    # Per-frame formats take gappy done frames; animations need a contiguous range.
    out = export_session(path, "fit", tmp_path / "out2", formats=("csv",), model=body_model)
    assert out.frames.tolist() == [1, 2, 3, 4, 6, 7]
    with pytest.raises(ExportError, match=r"not contiguous.*--frames"):
        export_session(path, "fit", tmp_path / "out3", formats=("bvh",), model=body_model)


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
