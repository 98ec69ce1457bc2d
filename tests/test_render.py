"""Tests for mvcap.render: rasterizer geometry, fill rule, near plane, passes, undistortion."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mvcap import render
from mvcap.cameras import Camera, Rig, project, undistort_points


# ------------------------------------------------------------------------------------------
# helpers (kept local so the tests need no body model)
# ------------------------------------------------------------------------------------------
def look_at(eye, target=(0.0, 0.0, 0.0), up=(0.0, 1.0, 0.0)):
    """OpenCV world->camera (R, t) for a camera at ``eye`` looking at ``target``."""
    eye, target, up = (np.asarray(a, float) for a in (eye, target, up))
    z = target - eye
    z /= np.linalg.norm(z)
    if abs(np.dot(z, up)) > 0.99:
        up = np.array([1.0, 0.0, 0.0])
    x = np.cross(z, up)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])
    return R, -R @ eye


def make_rig(poses, size=(96, 80), f=(90.0, 95.0), c=None, dist=None):
    W, H = size
    cx, cy = c if c is not None else ((W - 1) / 2 + 0.3, (H - 1) / 2 - 0.2)
    K = np.array([[f[0], 0.0, cx], [0, f[1], cy], [0, 0, 1.0]])
    cams = [
        Camera(f"cam{i}", K, np.zeros(5) if dist is None else dist, R, t, (W, H))
        for i, (R, t) in enumerate(poses)
    ]
    return Rig(tuple(cams))


def random_views(n, dist=3.0, seed=0):
    rng = np.random.default_rng(seed)
    poses = []
    for _ in range(n):
        d = rng.normal(size=3)
        d /= np.linalg.norm(d)
        poses.append(look_at(d * dist, target=rng.normal(scale=0.05, size=3)))
    return poses


def geosphere(freq=6, radius=1.0):
    """Geodesic sphere: 20 * freq**2 outward (counter-clockwise) faces."""
    t = (1 + 5**0.5) / 2
    V = np.array(
        [[-1, t, 0], [1, t, 0], [-1, -t, 0], [1, -t, 0], [0, -1, t], [0, 1, t],
         [0, -1, -t], [0, 1, -t], [t, 0, -1], [t, 0, 1], [-t, 0, -1], [-t, 0, 1]], float,
    )  # fmt: skip
    F = [[0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9], [5, 11, 4],
         [11, 10, 2], [10, 7, 6], [7, 1, 8], [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8],
         [3, 8, 9], [4, 9, 5], [2, 4, 11], [6, 2, 10], [8, 6, 7], [9, 8, 1]]  # fmt: skip
    pts, tris, n = [], [], freq
    for a, b, c in F:
        idx = {}
        for i in range(n + 1):
            for j in range(n + 1 - i):
                idx[i, j] = len(pts)
                pts.append((V[a] * (n - i - j) + V[b] * i + V[c] * j) / n)
        for i in range(n):
            for j in range(n - i):
                tris.append((idx[i, j], idx[i + 1, j], idx[i, j + 1]))
                if i + j < n - 1:
                    tris.append((idx[i + 1, j], idx[i + 1, j + 1], idx[i, j + 1]))
    P = np.array(pts)
    P /= np.linalg.norm(P, axis=1, keepdims=True)
    _, first, inv = np.unique(
        np.round(P * 1e6).astype(np.int64), axis=0, return_index=True, return_inverse=True
    )
    return torch.tensor(P[first] * radius, dtype=torch.float32), torch.tensor(
        inv.reshape(-1)[np.array(tris)]
    )


def jittered_plane(n=12, seed=0):
    """A unit square in the z=0 plane, n x n cells with jittered interior vertices, split
    along random diagonals. Returns vertices (N,3), faces (F,3), corners (4,3)."""
    rng = np.random.default_rng(seed)
    g = np.linspace(-0.5, 0.5, n + 1)
    X, Y = np.meshgrid(g, g, indexing="ij")
    jit = rng.uniform(-0.3, 0.3, size=(n + 1, n + 1, 2)) / n
    jit[[0, -1], :, 0] = 0
    jit[:, [0, -1], 1] = 0
    X, Y = X + jit[..., 0], Y + jit[..., 1]
    V = np.stack([X.ravel(), Y.ravel(), np.zeros(X.size)], 1)
    idx = np.arange((n + 1) ** 2).reshape(n + 1, n + 1)
    F = []
    for i in range(n):
        for j in range(n):
            a, b, c, d = idx[i, j], idx[i + 1, j], idx[i + 1, j + 1], idx[i, j + 1]
            F += [(a, b, c), (a, c, d)] if rng.random() < 0.5 else [(a, b, d), (b, c, d)]
    corners = np.array([[-0.5, -0.5, 0], [0.5, -0.5, 0], [0.5, 0.5, 0], [-0.5, 0.5, 0]])
    return torch.tensor(V, dtype=torch.float32), torch.tensor(F), corners


def pixel_rays_cam(rig: Rig, v: int):
    """(H, W, 3) camera-frame ray directions d with d_z = 1 through pixel centres."""
    cam = rig[v]
    W, H = cam.image_size
    uu, vv = np.meshgrid(np.arange(W, dtype=float), np.arange(H, dtype=float))
    pix = np.stack([uu, vv, np.ones_like(uu)], -1)
    return pix @ np.linalg.inv(cam.K).T


def ray_triangle(d, a, b, c):
    """Exact-ish (float64) ray-from-origin / triangle test. d (..., 3); returns
    (hit mask, t along d, barycentrics (..., 3))."""
    e1, e2 = b - a, c - a
    p = np.cross(d, e2)
    det = p @ e1
    s = -a
    with np.errstate(divide="ignore", invalid="ignore"):
        u = (p @ s) / det
        q = np.cross(s, e1)
        w = (q * d).sum(-1) / det
        t = (q @ e2) / det
    bary = np.stack([1 - u - w, u, w], -1)
    hit = (u >= 0) & (w >= 0) & (u + w <= 1) & (t > 0)
    return hit, t, bary


def cam_vertices(rig: Rig, v: int, verts) -> np.ndarray:
    cam = rig[v]
    return np.asarray(verts, float) @ cam.R_world2cam.T + cam.t_world2cam


# ------------------------------------------------------------------------------------------
# rasterizer geometry
# ------------------------------------------------------------------------------------------
def test_single_triangle_coverage_and_depth():
    rig = make_rig([(np.eye(3), np.zeros(3))], size=(120, 100))
    K = rig[0].K
    z = 2.0
    tri_px = np.array([[10.3, 12.7], [101.1, 20.2], [30.5, 88.9]])
    xy = (tri_px - K[:2, 2]) / np.diag(K)[:2] * z  # no skew here
    verts = torch.tensor(np.c_[xy, np.full(3, z)], dtype=torch.float32)
    frags = render.rasterize(rig, verts, [[0, 1, 2]], backend="cpu")
    assert frags.face_ids.shape == (1, 100, 120) and frags.bary.shape == (1, 100, 120, 3)
    assert frags.face_ids.dtype == torch.int64 and frags.mask.dtype == torch.bool
    assert frags.image_size == (120, 100)
    # reference: pixel centres inside the 2D triangle
    uu, vv = np.meshgrid(np.arange(120.0), np.arange(100.0))
    p = np.stack([uu, vv], -1)

    def edge(a, b):
        return (b[0] - a[0]) * (p[..., 1] - a[1]) - (b[1] - a[1]) * (p[..., 0] - a[0])

    e = [edge(tri_px[i], tri_px[(i + 1) % 3]) for i in range(3)]
    inside = (e[0] >= 0) & (e[1] >= 0) & (e[2] >= 0) | (e[0] <= 0) & (e[1] <= 0) & (e[2] <= 0)
    mask = frags.mask[0].numpy()
    assert (mask == inside).all()
    e1, e2 = tri_px[1] - tri_px[0], tri_px[2] - tri_px[0]
    area = 0.5 * abs(e1[0] * e2[1] - e1[1] * e2[0])
    assert abs(mask.sum() - area) < 0.02 * area
    assert torch.allclose(frags.depth[0][frags.mask[0]], torch.tensor(z), atol=1e-5)
    assert (frags.depth[0][~frags.mask[0]] == 0).all() and (
        frags.face_ids[0][~frags.mask[0]] == -1
    ).all()
    assert (frags.bary[0][~frags.mask[0]] == 0).all()


def test_tilted_triangle_depth_and_barycentrics_match_ray_casting():
    rig = make_rig([look_at((0.3, -0.2, -2.5), (0.1, 0.0, 0.2))])
    verts = np.array([[-0.8, -0.5, 0.4], [0.9, -0.3, -0.3], [0.0, 0.7, 0.5]])
    frags = render.rasterize(
        rig, torch.tensor(verts, dtype=torch.float64), [[0, 1, 2]], backend="cpu"
    )
    d = pixel_rays_cam(rig, 0)
    a, b, c = cam_vertices(rig, 0, verts)
    hit, t, bary = ray_triangle(d, a, b, c)
    m = frags.mask[0].numpy()
    assert hit.sum() > 500
    assert (m == hit).mean() > 0.999  # only pixels within float error of an edge may differ
    both = m & hit
    np.testing.assert_allclose(frags.depth[0].numpy()[both], t[both], rtol=1e-5)  # d_z = 1: t is z
    np.testing.assert_allclose(frags.bary[0].numpy()[both], bary[both], atol=1e-5)


def test_cube_frontal_coverage_depth_and_no_double_coverage():
    # unit cube centred 3 m in front of the camera; front face at z = 2.5
    corners = np.array([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (2.5, 3.5)])
    faces = [[0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3], [0, 1, 3], [0, 3, 2],
             [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1], [2, 3, 7], [2, 7, 6]]  # fmt: skip
    rig = make_rig([(np.eye(3), np.zeros(3))], size=(128, 128), f=(100.0, 100.0), c=(63.5, 63.5))
    verts = torch.tensor(corners, dtype=torch.float32)
    frags = render.rasterize(rig, verts, faces, backend="cpu")
    # front face spans 63.5 +- 100 * 0.5 / 2.5 = [43.5, 83.5]: pixels 44..83 (40 x 40)
    expected = np.zeros((128, 128), bool)
    expected[44:84, 44:84] = True
    assert (frags.mask[0].numpy() == expected).all()
    assert torch.allclose(frags.depth[0][frags.mask[0]], torch.tensor(2.5))
    # its diagonal passes exactly through pixel centres: the tie rule must give each to one
    count = render.coverage_count(rig, verts, faces)[0].numpy()
    assert set(np.unique(count)) == {0, 2}
    assert ((count == 2) == expected).all()
    assert set(np.unique(frags.face_ids[0][frags.mask[0]].numpy())) == {0, 1}


def test_barycentrics_are_perspective_correct():
    verts, faces = geosphere(5)
    rig = make_rig(random_views(3, dist=2.6, seed=1))
    frags = render.rasterize(rig, verts, faces, backend="cpu")
    for v in range(len(rig)):
        m = frags.mask[v]
        b = frags.bary[v][m].double()
        assert torch.allclose(b.sum(-1), torch.ones(len(b), dtype=torch.float64), atol=1e-5)
        assert (b > -1e-5).all()
        tri = faces[frags.face_ids[v][m]]
        X = (b[:, :, None] * verts.double()[tri]).sum(1)  # world points
        uv = project(rig.subset([rig.names[v]]), X, distort=False)[0]
        vv, uu = torch.nonzero(m, as_tuple=True)
        err = (uv - torch.stack([uu, vv], -1).double()).abs().max()
        assert err < 1e-3, err
        cam = torch.tensor(cam_vertices(rig, v, X.numpy()))
        assert torch.allclose(frags.depth[v][m].double(), cam[:, 2], rtol=1e-5)


def test_closed_mesh_every_pixel_covered_exactly_twice():
    verts, faces = geosphere(7)
    rig = make_rig(random_views(4, dist=2.4, seed=2), size=(128, 112), f=(110.0, 110.0))
    frags = render.rasterize(rig, verts, faces, backend="cpu")
    count = render.coverage_count(rig, verts, faces)
    assert set(torch.unique(count).tolist()) == {0, 2}  # front + back, no cracks, no overlaps
    assert ((count == 2) == frags.mask).all()
    # silhouette vs the analytic sphere: inscribed polyhedron, so inside the disc and close
    for v in range(len(rig)):
        d = pixel_rays_cam(rig, v)
        C = cam_vertices(rig, v, np.zeros((1, 3)))[0]
        dn = d / np.linalg.norm(d, axis=-1, keepdims=True)
        dist_to_centre = np.linalg.norm(np.cross(dn, C), axis=-1)
        disc = dist_to_centre <= 1.0
        m = frags.mask[v].numpy()
        assert not (m & ~disc).any()
        assert m.sum() > 0.97 * disc.sum()


def test_split_mesh_halves_are_disjoint_and_leave_no_holes():
    verts, faces, corners = jittered_plane(14, seed=3)
    poses = [
        look_at((0.4, -0.6, -1.6)),
        look_at((-0.9, 0.3, -1.2), (0.1, 0.1, 0)),
        look_at((0.2, 0.1, 1.5)),
    ]
    rig = make_rig(poses, size=(100, 90))
    full = render.rasterize(rig, verts, faces, backend="cpu")
    count = render.coverage_count(rig, verts, faces)
    assert count.max() == 1  # a flat sheet: never two triangles on one pixel
    assert (full.mask == (count == 1)).all()
    rng = np.random.default_rng(4)
    pick = torch.tensor(rng.random(len(faces)) < 0.5)
    a = render.rasterize(rig, verts, faces[pick], backend="cpu").mask
    b = render.rasterize(rig, verts, faces[~pick], backend="cpu").mask
    assert not (a & b).any()
    assert ((a | b) == full.mask).all()
    # and the union is the sheet's exact outline (two ray-cast triangles of the square)
    for v in range(len(rig)):
        d = pixel_rays_cam(rig, v)
        c = cam_vertices(rig, v, corners)
        outline = ray_triangle(d, c[0], c[1], c[2])[0] | ray_triangle(d, c[0], c[2], c[3])[0]
        assert full.mask[v].sum() > 500
        assert (full.mask[v].numpy() == outline).mean() > 0.999


def test_near_plane_triangle_crossing_camera_does_not_wrap_around():
    rig = make_rig([(np.eye(3), np.zeros(3))], size=(80, 60), f=(50.0, 50.0))
    # a floor triangle 0.5 m below the camera (y down), reaching 2 m behind the camera
    verts = np.array([[-3.0, 0.5, -2.0], [3.0, 0.5, -2.0], [0.2, 0.5, 6.0]])
    frags = render.rasterize(rig, torch.tensor(verts), [[0, 1, 2]], backend="cpu", near=1e-2)
    m = frags.mask[0].numpy()
    cy = rig[0].K[1, 2]
    rows = np.nonzero(m.any(1))[0]
    assert rows.min() > cy  # the floor is only seen below the horizon, nothing wraps above
    d = pixel_rays_cam(rig, 0)
    hit, t, _ = ray_triangle(d, *verts)
    hit &= t >= 1e-2
    assert m.sum() > 200 and (m == hit).mean() > 0.999
    np.testing.assert_allclose(frags.depth[0].numpy()[m & hit], t[m & hit], rtol=1e-5)
    # entirely behind the camera: nothing
    behind = torch.tensor(verts * np.array([1, 1, -1]) - np.array([0, 0, 7.0]))
    assert not render.rasterize(rig, behind, [[0, 1, 2]], backend="cpu").mask.any()
    # a vertex exactly in the camera plane
    on_plane = torch.tensor([[0.0, 0.5, 0.0], [1.0, 0.5, 3.0], [-1.0, 0.5, 3.0]])
    m2 = render.rasterize(rig, on_plane, [[0, 1, 2]], backend="cpu").mask[0].numpy()
    assert m2.any() and np.nonzero(m2.any(1))[0].min() > cy


def test_surface_point_projects_to_the_pixel_that_interpolates_it():
    verts, faces = geosphere(6)
    rig = make_rig(random_views(2, dist=2.8, seed=5), size=(160, 140), f=(150.0, 150.0))
    frags = render.rasterize(rig, verts, faces, backend="cpu")
    rng = np.random.default_rng(6)
    for v in range(len(rig)):
        sub = rig.subset([rig.names[v]])
        checked = 0
        for _ in range(200):
            f = int(rng.integers(len(faces)))
            w = rng.dirichlet(np.ones(3))
            X = (torch.tensor(w)[:, None] * verts.double()[faces[f]]).sum(0)
            uv = project(sub, X[None], distort=False)[0, 0]
            px, py = int(round(uv[0].item())), int(round(uv[1].item()))
            if not (0 <= px < 160 and 0 <= py < 140) or not frags.mask[v, py, px]:
                continue
            zc = cam_vertices(rig, v, X[None].numpy())[0, 2]
            if zc > frags.depth[v, py, px].item() + 0.02:  # occluded (back side)
                continue
            f2 = frags.face_ids[v, py, px]
            X2 = (frags.bary[v, py, px].double()[:, None] * verts.double()[faces[f2]]).sum(0)
            uv2 = project(sub, X2[None], distort=False)[0, 0]
            assert (uv2 - torch.tensor([px, py], dtype=torch.float64)).abs().max() < 1e-3
            assert (uv2 - uv).abs().max() <= 0.5 + 1e-6
            # in 3D: within a pixel footprint, divided by the obliquity (sphere normal = X)
            ray = torch.tensor(rig[v].center_world) - X
            cos = float((X / X.norm()) @ (ray / ray.norm()))
            if cos > 0.2:
                assert (X2 - X).norm() < 1.5 * zc / 150.0 / cos
            checked += 1
        assert checked > 40


def test_batch_dimension_matches_individual_renders():
    verts, faces = geosphere(3)
    rig = make_rig(random_views(2, seed=7))
    batch = torch.stack([verts, verts * 0.8 + torch.tensor([0.1, 0.0, 0.0])])
    fb = render.rasterize(rig, batch, faces, backend="cpu")
    assert fb.face_ids.shape == (2, 2, 80, 96) and fb.bary.shape == (2, 2, 80, 96, 3)
    for i in range(2):
        fi = render.rasterize(rig, batch[i], faces, backend="cpu")
        assert torch.equal(fb.face_ids[i], fi.face_ids) and torch.equal(fb.depth[i], fi.depth)
    rp = render.render_passes(fb, rig, batch, faces, template_vertices=verts)
    assert rp.images.shape == (2, 2, 80, 96, 14)


def test_input_errors_are_explained():
    verts, faces = geosphere(1)
    R, t = look_at((0, 0, -3))
    rig2 = Rig(
        (
            make_rig([(R, t)])[0],
            Camera("other", np.diag([50.0, 50.0, 1.0]), np.zeros(5), R, t, (64, 48)),
        )
    )
    # cameras of different sizes: each rendered at its own size on the common canvas (issue 18)
    both = render.rasterize(rig2, verts, faces, backend="cpu")
    (w0, h0), (w1, h1) = rig2[0].image_size, rig2[1].image_size
    assert tuple(both.face_ids.shape) == (2, max(h0, h1), max(w0, w1))
    for v, (w, h) in enumerate([(w0, h0), (w1, h1)]):
        alone = render.rasterize(Rig((rig2[v],)), verts, faces, backend="cpu")
        assert torch.equal(both.face_ids[v, :h, :w], alone.face_ids[0]) and alone.mask.any()
        assert (both.face_ids[v, h:] == -1).all() and (both.face_ids[v, :, w:] == -1).all()
    with pytest.raises(ValueError, match="with_image_size"):
        render.rasterize(rig2, verts, faces, image_size=(64, 48), backend="cpu")
    rig = make_rig([(R, t)])
    with pytest.raises(ValueError, match="with_image_size"):
        render.rasterize(rig, verts, faces, image_size=(32, 32), backend="cpu")
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        render.rasterize(rig, verts[:, :2], faces, backend="cpu")
    with pytest.raises(ValueError, match="faces"):
        render.rasterize(rig, verts, faces + 1000, backend="cpu")
    with pytest.raises(ValueError, match="backend"):
        render.rasterize(rig, verts, faces, backend="opengl")
    frags = render.rasterize(rig, verts, faces, backend="cpu")
    with pytest.raises(ValueError, match="template_vertices"):
        render.render_passes(frags, rig, verts, faces)


# ------------------------------------------------------------------------------------------
# passes
# ------------------------------------------------------------------------------------------
def _frontal_quad(z=2.0, half=0.5):
    # camera frame (x right, y down): 0 top-left, 1 top-right, 2 bottom-right, 3 bottom-left
    verts = torch.tensor([[-half, -half, z], [half, -half, z], [half, half, z], [-half, half, z]])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    uvs = torch.tensor([[0.0, 1.0], [1.0, 1.0], [1.0, 0.0], [0.0, 0.0]])  # image top = v 1
    return verts, faces, uvs


def test_texture_lookup_opengl_uv_convention():
    rig = make_rig([(np.eye(3), np.zeros(3))], size=(64, 64), f=(100.0, 100.0), c=(31.5, 31.5))
    verts, faces, uvs = _frontal_quad()
    Ht, Wt = 8, 16
    tex = np.zeros((Ht, Wt, 3), np.float32)
    tex[..., 0] = ((np.arange(Wt) + 0.5) / Wt)[None, :]  # r = u at texel centres
    tex[..., 1] = (1 - (np.arange(Ht) + 0.5) / Ht)[:, None]  # g = v (row 0 is the top)
    tex[..., 2] = 0.25
    frags = render.rasterize(rig, verts, faces, backend="cpu")
    rp = render.render_passes(
        frags,
        rig,
        verts,
        faces,
        texture=torch.tensor(tex),
        uvs=uvs,
        uv_faces=faces,
        passes=("albedo", "rgb", "normal", "mask"),
    )
    assert rp.channels[:3] == ("albedo_r", "albedo_g", "albedo_b")
    alb = rp.get("albedo")[0]
    m = frags.mask[0]
    vv, uu = torch.nonzero(m, as_tuple=True)
    # the quad spans pixels 31.5 +- 25: u_tex = (px - 6.5) / 50, v_tex = 1 - (py - 6.5) / 50
    u_exp = ((uu.float() - 6.5) / 50).clamp(0.5 / Wt, 1 - 0.5 / Wt)
    v_exp = (1 - (vv.float() - 6.5) / 50).clamp(0.5 / Ht, 1 - 0.5 / Ht)
    assert torch.allclose(alb[m][:, 0], u_exp, atol=1e-5)
    assert torch.allclose(alb[m][:, 1], v_exp, atol=1e-5)
    assert torch.allclose(alb[m][:, 2], torch.tensor(0.25))
    # frontal surface under the default headlight: rgb = albedo * (0.4 + 0.6)
    assert torch.allclose(rp.get("rgb")[0][m], alb[m], atol=1e-6)
    assert torch.allclose(rp.get("normal")[0][m], torch.tensor([0.0, 0.0, -1.0]), atol=1e-6)
    assert (rp.images[0][~m] == 0).all()
    # uint8 texture: a red top row shows at the top of the image
    tex8 = np.zeros((4, 4, 3), np.uint8)
    tex8[0, :, 0] = 255
    rp8 = render.render_passes(
        frags, rig, verts, faces, texture=tex8, uvs=uvs, uv_faces=faces, passes=("albedo",)
    )
    red = rp8.get("albedo_r")[0, :, :, 0]
    assert red[7, 31] == pytest.approx(1.0) and red[55, 31] == 0.0


def test_normals_face_camera_and_shading_with_vertex_colours():
    rig = make_rig([(np.eye(3), np.zeros(3))], size=(64, 64), f=(100.0, 100.0), c=(31.5, 31.5))
    verts, faces, _ = _frontal_quad()
    colours = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 1.0, 1.0]])
    for fcs in (faces, faces.flip(1)):  # either winding: normals face the camera
        frags = render.rasterize(rig, verts, fcs, backend="cpu")
        light = render.Light(ambient=0.2, diffuse=0.5, direction_cam=(0.0, 0.6, -0.8))
        rp = render.render_passes(
            frags,
            rig,
            verts,
            fcs,
            vertex_colors=colours,
            light=light,
            template_vertices=verts * 2,
            passes=("normal", "rgb", "albedo", "template", "depth"),
        )
        m = frags.mask[0]
        assert torch.allclose(rp.get("normal")[0][m], torch.tensor([0.0, 0.0, -1.0]), atol=1e-6)
        shade = 0.2 + 0.5 * 0.8
        assert torch.allclose(rp.get("rgb")[0][m], rp.get("albedo")[0][m] * shade, atol=1e-6)
        assert torch.allclose(rp.get("depth")[0][m, 0], torch.tensor(2.0))
        alb = rp.get("albedo")[0]
        assert torch.allclose(alb[7, 7], torch.tensor([1.0, 0, 0]), atol=0.05)  # near corner 0
        assert torch.allclose(alb[56, 56], torch.tensor([0, 0, 1.0]), atol=0.05)  # near corner 2
        tpl = rp.get("template")[0]
        assert torch.allclose(tpl[m][:, 2], torch.tensor(4.0))
    # default albedo is uniform grey
    rp = render.render_passes(frags, rig, verts, fcs, passes=("albedo",))
    assert torch.allclose(rp.images[0][frags.mask[0]], torch.tensor(render.DEFAULT_ALBEDO))


def test_sphere_normals_template_and_numba_matches_torch():
    verts, faces = geosphere(8)
    rig = make_rig(random_views(2, dist=3.0, seed=8), size=(96, 96), f=(120.0, 120.0))
    frags = render.rasterize(rig, verts, faces, backend="cpu")
    kw = dict(template_vertices=verts, vertex_colors=(verts + 1) / 2)
    rp = render.render_passes(frags, rig, verts, faces, **kw)
    ref = render.render_passes(frags, rig, verts, faces, backend="torch", **kw)
    assert rp.channels == ref.channels
    assert torch.allclose(rp.images, ref.images, atol=1e-5)
    n = rp.get("normal")
    m = frags.mask
    assert torch.allclose(n[m].norm(dim=-1), torch.ones(int(m.sum())), atol=1e-5)
    # the template pass on the sphere is the surface point: |x| ~ 1, normal ~ R x
    tpl = rp.get("template")[m]
    assert ((tpl.norm(dim=-1) - 1).abs() < 0.01).all()
    R = torch.tensor(np.stack([c.R_world2cam for c in rig]), dtype=torch.float32)
    n_from_tpl = torch.einsum("vij,vhwj->vhwi", R, rp.get("template"))[m]
    assert (n[m] * n_from_tpl).sum(-1).min() > 0.98
    assert (n[m][:, 2] < 0.2).all()  # facing the camera


# ------------------------------------------------------------------------------------------
# undistortion
# ------------------------------------------------------------------------------------------
def test_undistort_images_aligns_with_pinhole_projection():
    R, t = look_at((0, 0, -3))
    dist = np.array([-0.25, 0.08, 0.001, -0.0015, 0.0])
    rig = make_rig([(R, t), (R, t)], size=(120, 90), f=(100.0, 100.0), dist=dist)

    def pattern(u, v):  # smooth image in the undistorted pinhole space
        return 0.5 + 0.4 * np.sin(u / 7.0) * np.cos(v / 5.0)

    W, H = 120, 90
    uu, vv = np.meshgrid(np.arange(W, dtype=float), np.arange(H, dtype=float))
    uv_d = torch.tensor(np.stack([uu, vv], -1).reshape(1, -1, 2)).expand(2, -1, -1)
    uv_u = undistort_points(rig, uv_d).numpy()  # where each photo pixel sits in pinhole space
    photo = pattern(uv_u[..., 0], uv_u[..., 1]).reshape(2, H, W, 1).astype(np.float32)
    photo = np.concatenate([photo, photo * 0.5, photo * 0.25], -1)
    out = render.undistort_images(rig, photo)
    assert out.shape == photo.shape and out.dtype == photo.dtype
    inner = (slice(10, H - 10), slice(10, W - 10))
    err = np.abs(out[0][inner][..., 0] - pattern(uu, vv)[inner])
    assert err.max() < 0.02
    assert np.abs(out[..., 1] - out[..., 0] * 0.5).max() < 1e-5
    # torch uint8 in, torch uint8 out; many channels
    t8 = torch.tensor((photo * 255).astype(np.uint8))
    o8 = render.undistort_images(rig, t8)
    assert isinstance(o8, torch.Tensor) and o8.dtype == torch.uint8
    many = render.undistort_images(rig, np.repeat(photo, 3, axis=-1))
    assert np.allclose(many[..., 8], out[..., 2], atol=1e-6)
    with pytest.raises(ValueError, match="with_image_size"):
        render.undistort_images(rig, photo[:, :80])


def test_opencv_to_clip_maps_pixels_to_nvdiffrast_rows():
    # nvdiffrast samples pixel (row i, column j) at NDC ((2j+1)/W - 1, (2i+1)/H - 1)
    rig = make_rig(random_views(2, seed=10), size=(96, 80))
    X = torch.randn(50, 3, dtype=torch.float64) * 0.5
    uv = project(rig, X, distort=False)  # (V, N, 2)
    T = rig.tensors(dtype=torch.float64)
    cam = torch.einsum("vij,nj->vni", T["R_world2cam"], X) + T["t_world2cam"][:, None]
    A = render.opencv_to_clip(T["K"], (96, 80), near=0.1, far=10.0)
    clip = torch.einsum("vab,vnb->vna", A, torch.cat([cam, torch.ones_like(cam[..., :1])], -1))
    ndc = clip[..., :3] / clip[..., 3:]
    assert torch.allclose((ndc[..., 0] + 1) * 96 / 2 - 0.5, uv[..., 0], atol=1e-9)
    assert torch.allclose((ndc[..., 1] + 1) * 80 / 2 - 0.5, uv[..., 1], atol=1e-9)
    assert torch.allclose(clip[..., 3], cam[..., 2])
    z = torch.tensor([0.1, 10.0], dtype=torch.float64)
    zn = (A[0, 2, 2] * z + A[0, 2, 3]) / z
    assert torch.allclose(zn, torch.tensor([-1.0, 1.0], dtype=torch.float64))


# ------------------------------------------------------------------------------------------
# GPU parity
# ------------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_nvdiffrast_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("CUDA not available")
    pytest.importorskip("nvdiffrast.torch")
    verts, faces = geosphere(12)
    rig = make_rig(random_views(4, dist=2.5, seed=9), size=(256, 192), f=(220.0, 230.0))
    batch = torch.stack([verts, verts * 0.9])
    cpu = render.rasterize(rig, batch, faces, backend="cpu")
    gpu = render.rasterize(rig, batch.cuda(), faces, backend="nvdiffrast").to("cpu")
    assert gpu.face_ids.shape == cpu.face_ids.shape
    same = gpu.face_ids == cpu.face_ids
    assert same.float().mean() >= 0.99
    both = same & cpu.mask
    assert (gpu.depth[both] - cpu.depth[both]).abs().max() < 1e-4
    assert (gpu.bary[both] - cpu.bary[both]).abs().max() < 1e-3
    kw = dict(template_vertices=verts)
    p_gpu = render.render_passes(gpu.to("cuda"), rig, batch.cuda(), faces.cuda(), **kw).images.cpu()
    p_cpu = render.render_passes(cpu, rig, batch, faces, **kw).images
    assert (p_gpu - p_cpu).abs()[both].max() < 1e-3
