"""Anatomical virtual markers on the body mesh, for biomechanics exports (TRC, C3D).

Each marker is one mesh vertex, chosen once per body model by a fixed geometric rule on the
rest-pose (T-pose), mean-shape mesh; posed with the body, it follows the skin like a marker
stuck on it. The rules use the body's own axes (SMPL's: +X the person's left, +Y up, +Z
forward) and its rest joints, so they apply to any SMPL-layout mesh (the embedded body or a
user's SMPL file). ``docs/markers.md`` lists every rule and the vertex it picks on the
embedded body (regenerate the table with ``python -m mvcap.markers``).

Names: ``L``/``R`` prefix + landmark (``LASIS``, ``RPSIS``, ``LKNE_LAT``, ...), midline
markers without prefix (``C7``, ``CLAV``, ...). The biomechanics exports add the body's 24
joint centres under their SMPL names.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["MarkerSet", "anatomical_markers", "marker_table"]

# SMPL joint indices used by the rules
_PELVIS, _SPINE1, _SPINE2, _SPINE3, _NECK, _HEAD = 0, 3, 6, 9, 12, 15
_HIP, _KNEE, _ANKLE, _COLLAR, _SHOULDER, _ELBOW, _WRIST = (1, 2), (4, 5), (7, 8), (13, 14), (16, 17), (18, 19), (20, 21)
_SLAB = 0.01  # half-thickness (m) of the cross-sections the rules search; doubled until non-empty
_MIDLINE = 0.015  # |x| below this: on the body's midline


@dataclass(frozen=True)
class MarkerSet:
    """Virtual markers: names (M,), vertex_ids (M,) int64 on the model's mesh, rules (M,) text."""

    names: tuple[str, ...]
    vertex_ids: np.ndarray
    rules: tuple[str, ...]

    def positions(self, vertices: np.ndarray) -> np.ndarray:
        """vertices (T, N, 3) posed mesh -> marker positions (T, M, 3)."""
        return np.asarray(vertices)[:, self.vertex_ids]


def _pick(score: np.ndarray, among: np.ndarray, axis: np.ndarray | None = None, at: float = 0.0) -> int:
    """Index of the vertex maximising ``score`` (N,) among ``among`` (N,) bool, restricted to
    the cross-section ``|axis - at| < w`` when ``axis`` (N,) is given; w starts at 1 cm and
    doubles (up to 16 cm) while the cross-section holds no candidate."""
    half = _SLAB
    for _ in range(5):
        sel = np.flatnonzero(among if axis is None else among & (np.abs(axis - at) < half))
        if sel.size:
            return int(sel[np.argmax(score[sel])])
        half *= 2
    raise ValueError("a marker rule matches no mesh vertex; is this an SMPL-layout body (Y up, +Z forward)?")


def anatomical_markers(model) -> MarkerSet:
    """The anatomical marker set on ``model``'s mesh (rules: module docstring and docs/markers.md).

    Deterministic: the same model always gives the same vertex ids.
    """
    with torch.no_grad():
        v = model.template_vertices()[0].double().cpu().numpy()  # (N, 3) mean shape, T-pose
        J = model.rest_joints()[0].double().cpu().numpy()  # (24, 3)
    x, y, z = v[:, 0], v[:, 1], v[:, 2]
    names: list[str] = []
    ids: list[int] = []
    rules: list[str] = []

    def add(name: str, idx: int, rule: str) -> None:
        names.append(name)
        ids.append(idx)
        rules.append(rule)

    mid = np.abs(x - J[_PELVIS, 0]) < _MIDLINE
    everywhere = np.ones(len(v), bool)

    # head and trunk (midline)
    add("HEAD_TOP", _pick(y, everywhere), "highest vertex of the mesh")
    y_fore = J[_HEAD, 1] + 0.5 * (y.max() - J[_HEAD, 1])
    add("HEAD_FRONT", _pick(z, mid, y, y_fore),
        "most anterior midline vertex halfway between the head joint and the top of the head")  # fmt: skip
    add("HEAD_BACK", _pick(-z, mid, y, y_fore), "most posterior midline vertex at the HEAD_FRONT height")
    add("C7", _pick(-z, mid, y, J[_NECK, 1]),
        "most posterior midline vertex at the neck joint's height (base of the neck)")  # fmt: skip
    add("T10", _pick(-z, mid, y, J[_SPINE2, 1]), "most posterior midline vertex at the spine2 joint's height")
    y_clav = 0.5 * (J[_COLLAR[0], 1] + J[_COLLAR[1], 1])
    add("CLAV", _pick(z, mid, y, y_clav),
        "most anterior midline vertex at the collar joints' height (jugular notch)")  # fmt: skip
    add("STRN", _pick(z, mid, y, J[_SPINE3, 1]),
        "most anterior midline vertex at the spine3 joint's height (lower sternum)")  # fmt: skip

    for k, side in enumerate("LR"):
        s = 1.0 if J[_HIP[k], 0] > J[_PELVIS, 0] else -1.0  # +1: this side is +X
        sx = s * (x - J[_PELVIS, 0])  # lateral distance, positive on this side
        hip_x = s * (J[_HIP[k], 0] - J[_PELVIS, 0])
        # pelvis
        y_asis = J[_HIP[k], 1] + 0.5 * (J[_SPINE1, 1] - J[_HIP[k], 1])
        add(f"{side}ASIS", _pick(z, (sx > 0.7 * hip_x) & (sx < 1.3 * hip_x), y, y_asis),
            "most anterior vertex halfway between the hip and spine1 joints' heights, 0.7-1.3 x the hip "
            "joint's lateral offset")  # fmt: skip
        add(f"{side}PSIS", _pick(-z, (sx > 0.2 * hip_x) & (sx < 0.6 * hip_x), y, y_asis),
            "most posterior vertex at the ASIS height, 0.2-0.6 x the hip joint's lateral offset")  # fmt: skip
        add(f"{side}GTR", _pick(sx, sx > 0, y, J[_HIP[k], 1]),
            "most lateral vertex at the hip joint's height (greater trochanter)")  # fmt: skip
        # arm (T-pose: the arm lies along X, palm down, thumb forward)
        arm = sx > s * (J[_SHOULDER[k], 0] - J[_PELVIS, 0]) * 0.8
        near_sh = np.abs(z - J[_SHOULDER[k], 2]) < 0.03
        add(f"{side}ACR", _pick(y, near_sh, x, J[_SHOULDER[k], 0]),
            "highest vertex above the shoulder joint (|z - z_shoulder| < 3 cm): acromion")  # fmt: skip
        for name, sc, rule in (("ELB_LAT", y, "highest"), ("ELB_MED", -y, "lowest")):
            add(f"{side}{name}", _pick(sc, arm, x, J[_ELBOW[k], 0]),
                f"{rule} vertex of the arm's cross-section at the elbow joint (T-pose, palm down: the humeral "
                "epicondyles lie above/below the flexion axis)")  # fmt: skip
        for name, sc, rule in (("WRI_RAD", z, "most anterior"), ("WRI_ULN", -z, "most posterior")):
            add(f"{side}{name}", _pick(sc, arm, x, J[_WRIST[k], 0]),
                f"{rule} vertex of the arm's cross-section at the wrist joint (palm down, thumb forward: "
                "radial / ulnar styloid)")  # fmt: skip
        # leg
        leg = sx > 0.01
        for joint, lbl, what in ((_KNEE, "KNE", "knee joint (femoral epicondyle)"),
                                 (_ANKLE, "ANK", "ankle joint (malleolus)")):  # fmt: skip
            add(f"{side}{lbl}_LAT", _pick(sx, leg, y, J[joint[k], 1]),
                f"most lateral vertex of this leg's cross-section at the {what}")  # fmt: skip
            add(f"{side}{lbl}_MED", _pick(-sx, leg, y, J[joint[k], 1]),
                f"most medial vertex of this leg's cross-section at the {what}")  # fmt: skip
        foot = leg & (y < J[_ANKLE[k], 1])
        heel_z, toe_z = z[foot].min(), z[foot].max()
        low = foot & (y < 0.5 * (J[_ANKLE[k], 1] + y[foot].min()))
        add(f"{side}HEEL", _pick(-z, low), "most posterior vertex of the foot below mid-ankle height (calcaneus)")
        add(f"{side}TOE", _pick(z, foot), "most anterior vertex of the foot below the ankle joint (toe tip)")
        fore = low & (z > 0.5 * (heel_z + toe_z))
        add(f"{side}MT5", _pick(sx, fore),
            "most lateral vertex of the foot's front half below mid-ankle height (5th metatarsal head)")  # fmt: skip
        add(f"{side}MT1", _pick(-sx, fore),
            "most medial vertex of the foot's front half below mid-ankle height (1st metatarsal head)")  # fmt: skip
    return MarkerSet(tuple(names), np.asarray(ids, np.int64), tuple(rules))


def marker_table(model) -> str:
    """Markdown table of the marker set on ``model``: name, vertex id, rest position, rule."""
    ms = anatomical_markers(model)
    with torch.no_grad():
        v = model.template_vertices()[0].double().cpu().numpy()
    rows = ["| marker | vertex | rest position (m, x y z) | rule |", "|---|---|---|---|"]
    for n, i, r in zip(ms.names, ms.vertex_ids, ms.rules):
        p = " ".join(f"{c:+.3f}" for c in v[i])
        rows.append(f"| `{n}` | {int(i)} | {p} | {r} |")
    return "\n".join(rows)


if __name__ == "__main__":  # pragma: no cover - documentation helper
    from mvcap.body import load_body_model

    print(marker_table(load_body_model()))
