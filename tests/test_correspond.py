"""Tests for mvcap.correspond: eq. 2 (vertex -> pixel) and eq. 5 (pixel -> vertex)."""

from __future__ import annotations

import numpy as np
import torch

from mvcap import render
from mvcap.cameras import Camera, Rig, project
from mvcap.correspond import interpolate_to_pixels, splat_to_vertices, visible_vertices


def look_at(eye, target=(0.0, 0.0, 0.0), up=(0.0, 1.0, 0.0)):
    eye, target, up = (np.asarray(a, float) for a in (eye, target, up))
    z = (target - eye) / np.linalg.norm(target - eye)
    if abs(np.dot(z, up)) > 0.99:
        up = np.array([1.0, 0.0, 0.0])
    x = np.cross(z, up)
    x /= np.linalg.norm(x)
    R = np.stack([x, np.cross(z, x), z])
    return R, -R @ eye


def make_rig(n, size=(64, 56), f=80.0, dist=2.8, seed=0):
    rng = np.random.default_rng(seed)
    W, H = size
    K = np.array([[f, 0, (W - 1) / 2], [0, f, (H - 1) / 2], [0, 0, 1.0]])
    cams = []
    for i in range(n):
        d = rng.normal(size=3)
        R, t = look_at(d / np.linalg.norm(d) * dist)
        cams.append(Camera(f"c{i}", K, np.zeros(5), R, t, (W, H)))
    return Rig(tuple(cams))


def uv_sphere(n_lat=10, n_lon=16):
    """Closed UV sphere, outward faces."""
    verts = [[0, 0, 1.0]]
    for i in range(1, n_lat):
        th = np.pi * i / n_lat
        for j in range(n_lon):
            ph = 2 * np.pi * j / n_lon
            verts.append([np.sin(th) * np.cos(ph), np.sin(th) * np.sin(ph), np.cos(th)])
    verts.append([0, 0, -1.0])
    faces = []
    ring = lambda i, j: 1 + (i - 1) * n_lon + j % n_lon  # noqa: E731
    for j in range(n_lon):
        faces.append([0, ring(1, j), ring(1, j + 1)])
        faces.append([len(verts) - 1, ring(n_lat - 1, j + 1), ring(n_lat - 1, j)])
    for i in range(1, n_lat - 1):
        for j in range(n_lon):
            a, b, c, d = ring(i, j), ring(i + 1, j), ring(i + 1, j + 1), ring(i, j + 1)
            faces += [[a, b, c], [a, c, d]]
    return torch.tensor(verts, dtype=torch.float32), torch.tensor(faces)


def _setup(batch=False, n_views=3):
    verts, faces = uv_sphere()
    rig = make_rig(n_views)
    if batch:
        verts = torch.stack([verts, verts * 0.85 + torch.tensor([0.05, -0.02, 0.0])])
    frags = render.rasterize(rig, verts, faces, backend="cpu")
    return rig, verts, faces, frags


def test_splat_matches_brute_force_eq5():
    rig, verts, faces, frags = _setup(batch=True, n_views=2)
    N = verts.shape[-2]
    g = torch.Generator().manual_seed(0)
    per_pixel = torch.randn(*frags.face_ids.shape, 2, generator=g, dtype=torch.float64)
    pv, w = splat_to_vertices(per_pixel, frags, faces, N)
    assert pv.shape == (2, 2, N, 2) and w.shape == (2, 2, N) and pv.dtype == torch.float64
    acc = np.zeros((2, 2, N, 2))
    wsum = np.zeros((2, 2, N))
    fid, bary, pp = frags.face_ids.numpy(), frags.bary.double().numpy(), per_pixel.numpy()
    for b, v, y, x in zip(*np.nonzero(fid >= 0), strict=True):
        for k, vid in enumerate(faces[fid[b, v, y, x]].tolist()):
            acc[b, v, vid] += bary[b, v, y, x, k] * pp[b, v, y, x]
            wsum[b, v, vid] += bary[b, v, y, x, k]
    ref = np.where(wsum[..., None] > 0, acc / np.maximum(wsum, 1e-300)[..., None], 0)
    np.testing.assert_allclose(w.numpy(), wsum, atol=1e-9)
    np.testing.assert_allclose(pv.numpy(), ref, atol=1e-9)
    # every covered pixel hands out a total weight of 1
    assert torch.allclose(w.sum(-1), frags.mask.sum((-1, -2)).double(), atol=1e-6)


def test_splat_of_interpolated_field():
    rig, verts, faces, frags = _setup()
    N = verts.shape[0]
    vis = visible_vertices(frags, faces, N)
    # constant field: exact
    const = torch.tensor([[0.3, -1.2]]).expand(N, 2)
    back, w = splat_to_vertices(interpolate_to_pixels(const, frags, faces), frags, faces, N)
    assert torch.allclose(back[w > 0], torch.tensor([0.3, -1.2]), atol=1e-5)
    # linear field x -> A x + b: splat(interpolate) is the field at the vertex's weighted
    # pixel centroid, so it is exact up to the gradient times the 1-ring size
    A = torch.tensor([[0.7, -0.2, 0.4], [0.1, 0.5, -0.9]])
    field = verts @ A.T + torch.tensor([2.0, -1.0])
    back, w = splat_to_vertices(interpolate_to_pixels(field, frags, faces), frags, faces, N)
    seen = w > 0
    assert torch.equal(seen, vis)
    err = (back - field).norm(dim=-1)[seen]
    edge = (verts[faces[:, 0]] - verts[faces[:, 1]]).norm(dim=-1).max()
    assert err.max() < torch.linalg.matrix_norm(A, ord=2) * edge
    # and far tighter for vertices seen from both sides (interior of the visible surface)
    assert err.median() < 0.2 * torch.linalg.matrix_norm(A, ord=2) * edge
    assert (back[~seen] == 0).all() and (w[~seen] == 0).all()


def test_interpolate_positions_land_on_pixel_centres():
    rig, verts, faces, frags = _setup()
    X = interpolate_to_pixels(verts.double(), frags, faces)  # (V,H,W,3) world points
    assert X.shape == (*frags.face_ids.shape, 3)
    assert (X[~frags.mask] == 0).all()
    for v in range(len(rig)):
        m = frags.mask[v]
        uv = project(rig.subset([rig.names[v]]), X[v][m], distort=False)[0]
        yy, xx = torch.nonzero(m, as_tuple=True)
        assert (uv - torch.stack([xx, yy], -1).double()).abs().max() < 1e-3
    # per-view fields equal the shared one when identical; differ when not
    per_view = verts.double().expand(len(rig), -1, -1)
    assert torch.allclose(interpolate_to_pixels(per_view, frags, faces), X)
    scaled = per_view * torch.arange(1, len(rig) + 1, dtype=torch.float64)[:, None, None]
    Xs = interpolate_to_pixels(scaled, frags, faces)
    assert torch.allclose(Xs[1], 2 * X[1])


def test_visible_vertices_and_gradients():
    rig, verts, faces, frags = _setup(batch=True)
    N = verts.shape[-2]
    vis = visible_vertices(frags, faces, N)
    assert vis.shape == (2, 3, N) and vis.dtype == torch.bool
    for b in range(2):
        for v in range(3):
            f = frags.face_ids[b, v][frags.mask[b, v]].unique()
            ref = torch.zeros(N, dtype=torch.bool)
            ref[faces[f].reshape(-1)] = True
            assert torch.equal(vis[b, v], ref)
    # a convex body is seen from one side only: a camera never sees all vertices
    assert (vis.sum(-1) < N).all() and (vis.sum(-1) > N // 4).all()
    # both directions are differentiable w.r.t. the field values
    pp = torch.randn(*frags.face_ids.shape, 2, requires_grad=True)
    pv, w = splat_to_vertices(pp, frags, faces, N)
    pv.sum().backward()
    assert pp.grad is not None and (pp.grad[~frags.mask] == 0).all()
    vals = torch.randn(N, 2, requires_grad=True)
    interpolate_to_pixels(vals, frags, faces).sum().backward()
    assert vals.grad is not None and (vals.grad[~vis.any(0).any(0)] == 0).all()
