"""Pixel <-> vertex transfer through rasterized fragments (refinement paper, sec. 3).

* :func:`interpolate_to_pixels` -- eq. 2: a per-vertex field becomes a per-pixel field by
  barycentric interpolation over the visible triangle, ``f(x) = sum_i b_i(x) v[tri_i(x)]``.
* :func:`splat_to_vertices` -- eq. 5: a per-pixel field becomes a per-vertex field as the
  barycentric-weighted mean over every pixel whose visible triangle contains the vertex,
  ``v_i = sum_x b_i(x) f(x) / sum_x b_i(x)``.
* :func:`visible_vertices` -- vertices of at least one visible triangle.

Fragments come from :func:`mvcap.render.rasterize`; shapes (..., V, H, W). All functions
are vectorised torch (gathers / ``index_add_``), differentiable w.r.t. the field values,
and run on the fragments' device.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .render import Fragments

__all__ = ["splat_to_vertices", "interpolate_to_pixels", "visible_vertices"]


def _faces(faces, device) -> Tensor:
    f = faces if isinstance(faces, Tensor) else torch.as_tensor(faces)
    if f.ndim != 2 or f.shape[1] != 3 or f.is_floating_point():
        raise ValueError(f"faces must be an integer (F, 3) array, got shape {tuple(f.shape)}")
    return f.to(device=device, dtype=torch.long)


def _visible_corners(fragments: Fragments, faces: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Flattened visible pixels: (pixel index into the L*H*W grid (P,), corner vertex ids
    (P, 3), barycentrics (P, 3)) where L = prod(leading dims)."""
    fid = fragments.face_ids.reshape(-1)
    pix = torch.nonzero(fid >= 0, as_tuple=True)[0]
    corners = faces[fid[pix]]
    bary = fragments.bary.reshape(-1, 3)[pix]
    return pix, corners, bary


def splat_to_vertices(
    per_pixel: Tensor, fragments: Fragments, faces, num_vertices: int
) -> tuple[Tensor, Tensor]:
    """Per-pixel field -> per-vertex field by barycentric-weighted mean (eq. 5).

    per_pixel: (..., V, H, W, C), leading shape equal to the fragments'.
    faces: (F, 3) the mesh's faces; num_vertices: N.
    Returns ``per_vertex (..., V, N, C)`` (same dtype as ``per_pixel``; 0 where no pixel
    sees the vertex) and ``weight (..., V, N)`` = sum of the vertex's barycentric
    coordinates over the pixels (0 for unseen vertices; use ``weight > 0`` as visibility).
    """
    fid_shape = tuple(fragments.face_ids.shape)
    if tuple(per_pixel.shape[:-1]) != fid_shape:
        raise ValueError(
            f"per_pixel must have shape (..., V, H, W, C) = {fid_shape} + (C,), "
            f"got {tuple(per_pixel.shape)}"
        )
    dev = per_pixel.device
    if fragments.face_ids.device != dev:
        fragments = fragments.to(dev)
    faces = _faces(faces, dev)
    lead = fid_shape[:-2]
    H, W = fid_shape[-2:]
    L = 1
    for s in lead:
        L *= int(s)
    C = per_pixel.shape[-1]
    pix, corners, bary = _visible_corners(fragments, faces)
    dtype = per_pixel.dtype if per_pixel.is_floating_point() else torch.float32
    bary = bary.to(dtype)
    vals = per_pixel.reshape(-1, C)[pix].to(dtype)  # (P, C)
    view = torch.div(pix, H * W, rounding_mode="floor")  # which (batch, view) image
    slot = (view[:, None] * num_vertices + corners).reshape(-1)  # (P*3,)
    acc = torch.zeros(L * num_vertices, C, dtype=dtype, device=dev)
    acc = acc.index_add(0, slot, (bary[:, :, None] * vals[:, None, :]).reshape(-1, C))
    weight = torch.zeros(L * num_vertices, dtype=dtype, device=dev)
    weight = weight.index_add(0, slot, bary.reshape(-1))
    safe = torch.where(weight > 0, weight, torch.ones_like(weight))
    per_vertex = torch.where((weight > 0)[:, None], acc / safe[:, None], torch.zeros_like(acc))
    return per_vertex.reshape(*lead, num_vertices, C), weight.reshape(*lead, num_vertices)


def interpolate_to_pixels(per_vertex: Tensor, fragments: Fragments, faces) -> Tensor:
    """Per-vertex field -> per-pixel field by barycentric interpolation (eq. 2).

    per_vertex: (N, C) shared by all views, or (..., V, N, C) with the fragments' leading
    shape. Returns (..., V, H, W, C), zeros where no surface is rendered.
    """
    fid_shape = tuple(fragments.face_ids.shape)
    lead = fid_shape[:-2]
    H, W = fid_shape[-2:]
    dev = per_vertex.device
    if fragments.face_ids.device != dev:
        fragments = fragments.to(dev)
    faces = _faces(faces, dev)
    if per_vertex.ndim == 2:
        shared = True
    elif tuple(per_vertex.shape[:-2]) == lead:
        shared = False
    else:
        raise ValueError(
            f"per_vertex must be (N, C) or (..., V, N, C) with ... V = {lead}, "
            f"got {tuple(per_vertex.shape)}"
        )
    N, C = per_vertex.shape[-2:]
    if faces.numel() and int(faces.max()) >= N:
        raise ValueError(
            f"faces index vertex {int(faces.max())} but per_vertex has only {N} vertices"
        )
    pix, corners, bary = _visible_corners(fragments, faces)
    dtype = per_vertex.dtype if per_vertex.is_floating_point() else torch.float32
    if shared:
        vals = per_vertex.to(dtype)[corners]  # (P, 3, C)
    else:
        view = torch.div(pix, H * W, rounding_mode="floor")
        vals = per_vertex.to(dtype).reshape(-1, C)[view[:, None] * N + corners]
    out_vis = (bary.to(dtype)[:, :, None] * vals).sum(1)  # (P, C)
    out = torch.zeros(fragments.face_ids.numel(), C, dtype=dtype, device=dev)
    out = out.index_put((pix,), out_vis)
    return out.reshape(*lead, H, W, C)


def visible_vertices(fragments: Fragments, faces, num_vertices: int) -> Tensor:
    """(..., V, N) bool: vertex belongs to a triangle visible at >= 1 pixel in that view."""
    fid_shape = tuple(fragments.face_ids.shape)
    lead = fid_shape[:-2]
    H, W = fid_shape[-2:]
    dev = fragments.face_ids.device
    faces = _faces(faces, dev)
    L = 1
    for s in lead:
        L *= int(s)
    fid = fragments.face_ids.reshape(L, H * W)
    vis = torch.zeros(L * num_vertices, dtype=torch.bool, device=dev)
    # distinct visible faces per image first (far fewer than pixels)
    img, pixf = torch.nonzero(fid >= 0, as_tuple=True)
    key = torch.unique(img * faces.shape[0] + fid[img, pixf])
    img_u = torch.div(key, faces.shape[0], rounding_mode="floor")
    face_u = key - img_u * faces.shape[0]
    vis[(img_u[:, None] * num_vertices + faces[face_u]).reshape(-1)] = True
    return vis.reshape(*lead, num_vertices)
