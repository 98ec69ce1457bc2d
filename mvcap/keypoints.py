"""2D landmark sets of the detectors mvcap reads, and their definitions on the body mesh.

A :class:`KeypointSet` names a detector's landmarks in its output order (canonical
``snake_case`` names; "left" is the person's left), says which landmark each becomes under a
left/right exchange (``flip_index``, for the triangulation's swap handling) and builds its
:class:`mvcap.initialize.KeypointDefinition` on an SMPL-layout body (how the initial fit
computes each landmark from the posed body). The session stores the set's ``name`` as its
detections' ``keypoint_format``; ``mvcap init`` looks the definition up from it.

=================  ====  ==============================================================
set                K     detectors
=================  ====  ==============================================================
mediapipe_pose_33  33    MediaPipe Pose (``mvcap detect``, the built-in default)
body_25            25    OpenPose BODY_25; EasyMocap annotations (its default layout)
coco_17            17    COCO keypoints (RTMPose / MMPose / ViTPose body models)
halpe_26           26    HALPE_26 (Pose2Sim's default RTMPose model)
coco_133           133   COCO-WholeBody (RTMPose whole-body; 17 body, 6 feet, 68 face, 2x21 hands)
=================  ====  ==============================================================

Rules on the mesh (shared by every set, and the same as MediaPipe's, see
:func:`mvcap.initialize.mediapipe_keypoint_definition`):

* shoulders, elbows, wrists, knees, ankles: the SMPL joint of that name;
* nose, eyes, ears, heels, big and small toes: the body model's extra vertices (the vertex
  nearest Anny's COCO keypoint of that name, chosen by the body builder);
* hips: COCO-style hips sit in the middle of the body's cross-section at hip height, not at
  SMPL's femoral head: the mean of the rest-pose skin vertices on that side of the midline
  within +-1.5 cm of the hip joint's height (skinned like any vertex);
* neck (OpenPose / HALPE): the middle of the two shoulder joints, as OpenPose's neck label
  (the shoulders' midpoint) is defined; mid hip (OpenPose ``MidHip``, HALPE ``hip``): the
  middle of the two hip landmarks; head (HALPE, the top of the head): the highest vertex of
  the rest mesh;
* COCO-WholeBody hand roots: the wrist joints. Face landmarks and fingers stay undefined (not
  used by the fit); under a left/right exchange the hands swap and the face maps to itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["KeypointSet", "KEYPOINT_SETS", "keypoint_set", "keypoint_set_for_count", "register_joint_pairs"]

MEDIAPIPE_POSE_33 = "mediapipe_pose_33"

_BODY_25 = (
    "nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow",
    "left_wrist", "mid_hip", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee",
    "left_ankle", "right_eye", "left_eye", "right_ear", "left_ear", "left_big_toe", "left_small_toe",
    "left_heel", "right_big_toe", "right_small_toe", "right_heel",
)  # fmt: skip
_COCO_17 = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
    "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip
_HALPE_26 = _COCO_17 + (
    "head", "neck", "mid_hip", "left_big_toe", "right_big_toe", "left_small_toe", "right_small_toe",
    "left_heel", "right_heel",
)  # fmt: skip
_HAND_21 = ("root",) + tuple(f"{f}{i}" for f in ("thumb", "index", "middle", "ring", "pinky") for i in range(1, 5))
_COCO_133 = (
    _COCO_17
    + ("left_big_toe", "left_small_toe", "left_heel", "right_big_toe", "right_small_toe", "right_heel")
    + tuple(f"face{i}" for i in range(68))
    + tuple(f"left_hand_{n}" for n in _HAND_21)
    + tuple(f"right_hand_{n}" for n in _HAND_21)
)

#: landmark -> SMPL joint index
_AT_JOINT = {
    "left_shoulder": 16, "right_shoulder": 17, "left_elbow": 18, "right_elbow": 19, "left_wrist": 20,
    "right_wrist": 21, "left_knee": 4, "right_knee": 5, "left_ankle": 7, "right_ankle": 8,
    "left_hand_root": 20, "right_hand_root": 21,
}  # fmt: skip
#: landmark -> the body model's extra vertex name
_AT_VERTEX = {
    "nose": "nose", "left_eye": "leye", "right_eye": "reye", "left_ear": "lear", "right_ear": "rear",
    "left_heel": "LHeel", "right_heel": "RHeel", "left_big_toe": "LBigToe", "right_big_toe": "RBigToe",
    "left_small_toe": "LSmallToe", "right_small_toe": "RSmallToe",
}  # fmt: skip
_HIP_SLAB_M = 0.015  # half-height of the slab whose skin defines a hip landmark (as MediaPipe's)


def _flip(names: tuple[str, ...]) -> np.ndarray:
    """(K,) index of the landmark each becomes under a left/right exchange."""
    idx = np.arange(len(names))
    for i, n in enumerate(names):
        for a, b in (("left_", "right_"), ("right_", "left_"), ("_left", "_right"), ("_right", "_left")):
            if a in n and n.replace(a, b, 1) in names:
                idx[i] = names.index(n.replace(a, b, 1))
                break
    return idx


@dataclass(frozen=True)
class KeypointSet:
    """A detector's landmark set: ``name`` (stored as the detections' keypoint_format),
    ``names`` (K,) in output order, ``detectors`` (who writes it)."""

    name: str
    names: tuple[str, ...]
    detectors: str

    @property
    def flip_index(self) -> np.ndarray:
        """(K,) the landmark each one becomes when left and right are exchanged."""
        return _flip(self.names)

    def definition(self, model):
        """The :class:`mvcap.initialize.KeypointDefinition` of this set on ``model`` (rules:
        the module docstring)."""
        from mvcap.initialize import KeypointDefinition, mediapipe_keypoint_definition

        if self.name == MEDIAPIPE_POSE_33:
            return mediapipe_keypoint_definition(model)
        names = self.names
        K = len(names)
        jw = np.zeros((K, 24))
        rules = ["undefined"] * K
        vid: list[int] = []
        vrows: list[tuple[int, int, float]] = []  # (keypoint, column, weight)

        def add_vertices(k: int, ids, weights) -> None:
            for i, w in zip(ids, weights, strict=True):
                if int(i) not in vid:
                    vid.append(int(i))
                vrows.append((k, vid.index(int(i)), float(w)))

        with torch.no_grad():
            tpl = model.template_vertices()[0].double().cpu().numpy()
            J = model.rest_joints()[0].double().cpu().numpy()
        hips: dict[str, tuple[np.ndarray, np.ndarray, str]] = {}  # side -> (vertex ids, weights, rule)
        for side, j in (("left", 1), ("right", 2)):
            s = np.sign(J[j, 0] - J[0, 0])
            sel = np.flatnonzero((np.abs(tpl[:, 1] - J[j, 1]) < _HIP_SLAB_M) & (np.sign(tpl[:, 0] - J[0, 0]) == s))
            if sel.size >= 3:
                rule = f"mean of {sel.size} skin vertices at hip-joint height (+-1.5 cm), this side"
                hips[side] = (sel, np.full(sel.size, 1.0 / sel.size), rule)
        extra = model.extra_vertex_ids
        for k, n in enumerate(names):
            if n in _AT_JOINT:
                jw[k, _AT_JOINT[n]] = 1.0
                rules[k] = f"joint {model.joint_names[_AT_JOINT[n]]}"
            elif n in _AT_VERTEX and _AT_VERTEX[n] in extra:
                add_vertices(k, [extra[_AT_VERTEX[n]]], [1.0])
                rules[k] = f"vertex {extra[_AT_VERTEX[n]]} ({_AT_VERTEX[n]})"
            elif n in ("left_hip", "right_hip"):
                side = n.split("_")[0]
                if side in hips:
                    add_vertices(k, hips[side][0], hips[side][1])
                    rules[k] = hips[side][2]
                else:  # an unusual mesh: fall back to the joint
                    jw[k, 1 if side == "left" else 2] = 1.0
                    rules[k] = f"joint {side}_hip (fallback)"
            elif n == "mid_hip":
                for side, j in (("left", 1), ("right", 2)):
                    if side in hips:
                        add_vertices(k, hips[side][0], 0.5 * hips[side][1])
                    else:
                        jw[k, j] += 0.5
                rules[k] = "middle of the two hip landmarks"
            elif n == "neck":
                jw[k, 16] = jw[k, 17] = 0.5
                rules[k] = "middle of the two shoulder joints (OpenPose's neck)"
            elif n == "head":
                top = int(np.argmax(tpl[:, 1]))
                add_vertices(k, [top], [1.0])
                rules[k] = f"vertex {top} (highest of the rest mesh: top of the head)"
        vw = np.zeros((K, len(vid)))
        for k, m, w in vrows:
            vw[k, m] += w
        defined = (jw.sum(1) + vw.sum(1)) > 0
        return KeypointDefinition(names, jw, np.array(vid, np.int64), vw, defined, tuple(rules))


def _mediapipe_names() -> tuple[str, ...]:
    from mvcap.detect import MEDIAPIPE_POSE_33 as names

    return names


KEYPOINT_SETS: dict[str, KeypointSet] = {
    MEDIAPIPE_POSE_33: KeypointSet(MEDIAPIPE_POSE_33, _mediapipe_names(), "MediaPipe Pose (mvcap detect)"),
    "body_25": KeypointSet("body_25", _BODY_25, "OpenPose BODY_25, EasyMocap"),
    "coco_17": KeypointSet("coco_17", _COCO_17, "COCO 17 (RTMPose, MMPose, ViTPose)"),
    "halpe_26": KeypointSet("halpe_26", _HALPE_26, "HALPE_26 (Pose2Sim's RTMPose)"),
    "coco_133": KeypointSet("coco_133", _COCO_133, "COCO-WholeBody 133 (RTMPose whole-body)"),
}


def keypoint_set(name: str | None) -> KeypointSet:
    """The landmark set called ``name`` (a session's ``keypoint_format``); ValueError naming the
    known sets otherwise."""
    key = str(name).lower() if name is not None else None
    if key not in KEYPOINT_SETS:
        raise ValueError(f"unknown keypoint set {name!r}; known: {', '.join(KEYPOINT_SETS)}")
    return KEYPOINT_SETS[key]


def keypoint_set_for_count(k: int, candidates=("body_25", "halpe_26", "coco_17", "coco_133")) -> KeypointSet:
    """The set among ``candidates`` with ``k`` landmarks (how JSON files without a layout name
    are recognised); ValueError when none or several match."""
    hits = [KEYPOINT_SETS[c] for c in candidates if len(KEYPOINT_SETS[c].names) == k]
    if len(hits) != 1:
        sizes = ", ".join(f"{c} ({len(KEYPOINT_SETS[c].names)})" for c in candidates)
        raise ValueError(f"{k} keypoints per person match no single known layout among {sizes}; name it explicitly")
    return hits[0]


def register_joint_pairs(name: str) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """(landmark indices, SMPL joint indices) of the set's landmarks that sit at SMPL joints or
    close to them (shoulders, elbows, wrists, hips, knees, ankles): the 2D targets of the
    registration's keypoint term. None for an unknown set."""
    if str(name).lower() not in KEYPOINT_SETS:
        return None
    names = KEYPOINT_SETS[str(name).lower()].names
    joints = {**{n: j for n, j in _AT_JOINT.items() if "hand" not in n}, "left_hip": 1, "right_hip": 2}
    pairs = [(k, joints[n]) for k, n in enumerate(names) if n in joints]
    return tuple(k for k, _ in pairs), tuple(j for _, j in pairs)
