"""Fitting the body: the one fitting kit (parameterisation, regularisers, solver) and the
dense / sparse 2D fit built on it.

**The kit** (:class:`BodyFit`, :func:`lbfgs`): B bodies around an initial estimate, fitted to a
list of data terms plus a fixed set of regularisers::

    E_b = sum_k term_k(posed_b)                                  (the caller's data terms)
        + w_init * |delta_b|^2 + w_limits * limits(pose_b) + w_prior * prior(pose_b)
        + w_temporal * |body_b - body_prev_b|^2 + w_betas * |betas_b - betas_ref|^2

A data term is any callable ``posed -> (B,)`` per-body loss, where ``posed`` is what the
body callable returns for the current parameters (a :class:`mvcap.body.BodyOutput` with
vertices (B, N, 3) and joints (B, 24, 3) for a :class:`~mvcap.body.BodyModel`); adding a cue
to a fit means adding one callable to the list. The pose is parameterised as a local
rotation update of the initial estimate, ``R_j = R_j_init exp(delta_j)`` (no singularity at
any heading or joint angle); the first ``free_joints`` joints move (1: the root alone).
``body_b`` are the relative joint rotations 1..23 (the root's heading is left to the data:
rotation vectors jump at pi). The shape is held at the initial betas unless optimised;
``betas_ref`` defaults to the initial betas. The solver is L-BFGS with a strong-Wolfe line
search over all B bodies at once (their losses summed, or averaged with ``reduce="mean"``),
or, for bodies that share nothing (``solve(per_body=True)``), one L-BFGS per body with every
loss evaluation batched over the bodies (:func:`lbfgs_per_body`).
The initializer (:mod:`mvcap.initialize`, 3D/2D keypoint and mask terms) and the
registration (:mod:`mvcap.register`, silhouette and keypoint terms) use the same kit.

**The 2D fit** (:func:`fit_body`). Objective for B frames, V views, P target points (mesh
vertices or joints)::

    E = w_data * sum_v sum_i w_vi rho(|pi_v(X_i) - y_vi| / s_v) / sum w  + regularisers

``rho`` is Geman-McClure, divided by sigma^2 so that it saturates at 1 for outliers;
``s_v`` is the person's size in view v (the diagonal of the projected body's bounding box),
which makes the data term independent of image resolution and distance, as in the
refinement paper.

``independent_views=True`` fits one body per view (each view sees only its own targets):
the per-view updates of ReFit's multi-view fusion (see :mod:`mvcap.fuse`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import roma
import torch
from torch import Tensor

from mvcap.body import BodyModel, BodyParams
from mvcap.cameras import Rig, cam_to_pixels, world_to_cam, world_to_cam_per_view
from mvcap.poses import limit_violation_rotmats

__all__ = [
    "FitConfig",
    "Targets",
    "FitResult",
    "fit_body",
    "geman_mcclure",
    "person_scale",
    "Regularisers",
    "SolverConfig",
    "SolverStats",
    "BodyFit",
    "DataTerm",
    "lbfgs",
    "lbfgs_per_body",
    "default_pose_prior",
]

#: A data term: posed body (what the fit's body callable returns) -> per-body loss (B,).
DataTerm = Callable[[object], Tensor]


@dataclass(frozen=True)
class FitConfig:
    """Weights and solver settings for :func:`fit_body` (loaded from TOML [fit])."""

    iterations: int = 40
    lbfgs_history: int = 20
    gm_sigma: float = 0.05  # Geman-McClure scale, as a fraction of the person's image size
    w_data: float = 1.0
    w_init: float = 1e-4  # closeness to the initial estimate, per joint, radians^2
    w_limits: float = 1e-2  # anatomical joint-limit violations, radians^2
    w_prior: float = 1e-4  # Gaussian pose prior fitted on our pose sampler (Mahalanobis)
    w_temporal: float = 0.0  # closeness to the previous frame's joint rotations 1..23 (sequences)
    w_betas: float = 1e-3  # closeness to the known shape, when optimize_betas
    optimize_betas: bool = False
    optimize_transl: bool = True
    tolerance_grad: float = 1e-9  # torch's L-BFGS tests (the defaults practically never fire)
    tolerance_change: float = 1e-12
    # convergence test: stop when the loss fell by less than ftol (relative) over `window`
    # iterations or the gradient's norm is below gtol; 0 = off. The defaults only stop a fit
    # that has stalled: at 40 iterations the dense fits are still improving (see fit_profile)
    ftol: float = 1e-5
    gtol: float = 1e-5
    window: int = 3

    def __post_init__(self):
        self.solver  # noqa: B018 - checks the solver settings when the config is loaded

    @property
    def regularisers(self) -> Regularisers:
        return Regularisers(self.w_init, self.w_limits, self.w_prior, self.w_temporal, self.w_betas)

    @property
    def solver(self) -> SolverConfig:
        return SolverConfig(
            self.iterations,
            self.lbfgs_history,
            self.tolerance_grad,
            self.tolerance_change,
            self.ftol,
            self.gtol,
            self.window,
        )


@dataclass(frozen=True)
class Targets:
    """2D targets for the fit.

    uv: (B, V, P, 2) pixels; weight: (B, V, P) >= 0 (0 = no target);
    points: "vertices" (P = N mesh vertices) or "joints" (P = 24 body joints);
    distorted: True if ``uv`` are in the distorted camera image, False for the
    undistorted pinhole image (the image space the renderer works in).
    """

    uv: Tensor
    weight: Tensor
    points: str = "vertices"
    distorted: bool = False

    def __post_init__(self):
        if self.uv.ndim != 4 or self.uv.shape[-1] != 2:
            raise ValueError(f"Targets.uv must be (B, V, P, 2), got {tuple(self.uv.shape)}")
        if self.weight.shape != self.uv.shape[:-1]:
            raise ValueError(f"Targets.weight must be {tuple(self.uv.shape[:-1])}, got {tuple(self.weight.shape)}")
        if self.points not in ("vertices", "joints"):
            raise ValueError(f"Targets.points must be 'vertices' or 'joints', got {self.points!r}")


@dataclass(frozen=True)
class FitResult:
    """pose_rotvecs (B, 24, 3); betas (B, K); transl (B, 3) (with a view axis
    (B, V, ...) when fitted with independent views); loss (B,); residual_px (B, V)
    weighted mean target distance after the fit; iterations, seconds and loss evaluations
    (closures) of the solver; frame_iterations: each frame's iterations when the frames were
    solved as independent problems (``independent_frames``), else empty."""

    pose_rotvecs: Tensor
    betas: Tensor
    transl: Tensor
    loss: Tensor
    residual_px: Tensor
    iterations: int
    seconds: float
    evaluations: int = 0
    frame_iterations: tuple[int, ...] = ()


def geman_mcclure(sq_residual: Tensor, sigma: float) -> Tensor:
    """rho(x) / sigma^2 = x^2 / (sigma^2 + x^2), from squared residuals; in [0, 1)."""
    return sq_residual / (sigma * sigma + sq_residual)


def person_scale(uv_pixels: Tensor) -> Tensor:
    """Diagonal of the bounding box of projected points: (..., P, 2) -> (...,) pixels."""
    lo = uv_pixels.amin(dim=-2)
    hi = uv_pixels.amax(dim=-2)
    return (hi - lo).norm(dim=-1).clamp_min(1.0)


# Lean rotation conversions for the closure: a fit of one body is bound by the number of small
# tensor ops, and these use about half as many as roma's general-purpose ones.
def _so3_exp(rotvecs: Tensor) -> Tensor:
    """Rotation vectors (..., 3) -> matrices (..., 3, 3) (Rodrigues; exact at 0, where fits start)."""
    th2 = (rotvecs * rotvecs).sum(-1)[..., None, None]
    small = th2 < 1e-6
    th2_safe = torch.where(small, torch.ones_like(th2), th2)
    th = th2_safe.sqrt()
    a = torch.where(small, 1 - th2 / 6, torch.sin(th) / th)  # sin(th) / th
    b = torch.where(small, 0.5 - th2 / 24, (1 - torch.cos(th)) / th2_safe)  # (1 - cos(th)) / th^2
    x, y, z = rotvecs.unbind(-1)
    zero = torch.zeros_like(x)
    K = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).unflatten(-1, (3, 3))
    return torch.eye(3, dtype=rotvecs.dtype, device=rotvecs.device) + a * K + b * (K @ K)


def _so3_log(R: Tensor) -> Tensor:
    """Rotation matrices (..., 3, 3) -> rotation vectors (..., 3) of angle <= pi; close to pi,
    where the direct formula loses the axis, roma's conversion takes over."""
    v = torch.stack([R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]], -1)
    cos = (R.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2
    s2 = (v * v).sum(-1)  # 4 sin^2(th)
    small = s2 < 1e-8
    sin2 = torch.where(small, torch.ones_like(s2), s2).sqrt()  # 2 sin(th) (1 where small)
    th = torch.atan2(sin2 / 2, cos)
    scale = torch.where(small, 0.5 + s2 / 48, th / sin2)  # th / (2 sin(th)) ~ 1/2 + th^2 / 12
    out = scale[..., None] * v
    near_pi = th > 2.5
    if bool(near_pi.any()):
        out = torch.where(near_pi[..., None], roma.rotmat_to_rotvec(R), out)
    return out


class PosePrior:
    """A Gaussian prior on joint rotation vectors (mean, inverse covariance per joint),
    fitted on mvcap's own anatomical pose sampler so it can be shipped freely."""

    def __init__(self, mean: Tensor, precision: Tensor):
        self.mean = mean  # (23, 3)
        self.precision = precision  # (23, 3, 3)
        self._cast: dict = {}  # (dtype, device) -> (mean, precision): a fit reads them every closure

    @classmethod
    def from_sampler(cls, num_samples: int = 4000, seed: int = 0) -> PosePrior:
        import numpy as np

        from mvcap.motions import sample_poses

        poses = torch.as_tensor(sample_poses(np.random.default_rng(seed), num_samples), dtype=torch.float64)
        body = poses[:, 1:]  # (S, 23, 3) relative joint rotations
        mean = body.mean(0)
        centred = body - mean
        cov = torch.einsum("sji,sjk->jik", centred, centred) / (num_samples - 1)
        cov = cov + torch.eye(3, dtype=torch.float64) * 1e-3  # ~1.8 deg floor for rigid joints
        return cls(mean.float(), torch.linalg.inv(cov).float())

    def __call__(self, pose_rotvecs: Tensor) -> Tensor:
        """pose_rotvecs (..., 24, 3) -> (...,) Mahalanobis energy of joints 1..23."""
        return self.body(pose_rotvecs[..., 1:, :])

    def body(self, body_rotvecs: Tensor) -> Tensor:
        """body_rotvecs (..., 23, 3): joints 1..23 -> (...,) Mahalanobis energy."""
        key = (body_rotvecs.dtype, str(body_rotvecs.device))
        if key not in self._cast:
            self._cast[key] = (self.mean.to(body_rotvecs), self.precision.to(body_rotvecs))
        mean, precision = self._cast[key]
        d = body_rotvecs - mean
        return torch.einsum("...ji,jik,...jk->...", d, precision, d)


_PRIOR_CACHE: dict = {}


def default_pose_prior() -> PosePrior:
    if "prior" not in _PRIOR_CACHE:
        _PRIOR_CACHE["prior"] = PosePrior.from_sampler()
    return _PRIOR_CACHE["prior"]


# ------------------------------------------------------------------------------------------
# the kit
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Regularisers:
    """Weights of the kit's regulariser terms (per body; 0 = off)."""

    w_init: float = 0.0  # |delta|^2: closeness to the initial estimate, radians^2 per joint
    w_limits: float = 0.0  # anatomical joint-limit violations, radians^2
    w_prior: float = 0.0  # Gaussian pose prior fitted on our pose sampler (Mahalanobis)
    w_temporal: float = 0.0  # |body - body_prev|^2 over joints 1..23 (needs prev_pose_rotvecs)
    w_betas: float = 0.0  # |betas - betas_ref|^2 (only when the betas are optimised)


@dataclass(frozen=True)
class SolverConfig:
    """L-BFGS settings: iterations (max), history size and the stopping tests.

    tolerance_grad / tolerance_change are torch's own tests (max |gradient|; absolute loss
    and step changes), which practically never fire at their defaults. The convergence test
    (off at 0): stop when the loss fell by less than ``ftol`` (relative) over the last
    ``window`` iterations, or when the gradient's norm is below ``gtol``."""

    iterations: int = 40
    history: int = 20
    tolerance_grad: float = 1e-9
    tolerance_change: float = 1e-12
    ftol: float = 0.0
    gtol: float = 0.0
    window: int = 3

    def __post_init__(self):
        if self.ftol < 0 or self.gtol < 0 or self.window < 1:
            raise ValueError(
                f"the solver's ftol and gtol must be >= 0 and its window >= 1 (fit.ftol, fit.gtol, fit.window), "
                f"got {self.ftol}, {self.gtol}, {self.window}"
            )


@dataclass(frozen=True)
class SolverStats:
    """What one :func:`lbfgs` run did: iterations, loss+gradient evaluations (closures), why it
    stopped ("iterations", "evaluations", "converged: loss", "converged: gradient", "tolerance"
    for torch's own tests, or "none" when given no iterations), the final loss and the norm of
    its gradient (NaN when no iterations)."""

    iterations: int
    evaluations: int
    stop: str
    loss: float = float("nan")
    grad_norm: float = float("nan")


def _cubic_step(t1: float, f1: float, g1: float, t2: float, f2: float, g2: float, lo: float, hi: float) -> float:
    """Minimiser of the cubic with values f1, f2 and slopes g1, g2 at steps t1, t2, clamped to
    [lo, hi]; the interval's middle when the cubic has no minimum."""
    d1 = g1 + g2 - 3 * (f1 - f2) / (t1 - t2)
    disc = d1 * d1 - g1 * g2
    if disc < 0:
        return (lo + hi) / 2
    d2 = math.sqrt(disc)
    if t1 <= t2:
        t = t2 - (t2 - t1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
    else:
        t = t1 - (t1 - t2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
    return min(max(t, lo), hi)


# The solver in coroutine form: it yields the point it wants evaluated and is sent back the
# loss and flat gradient there; its return value is what it found. The driver decides how
# points are evaluated, so B independent problems can share one batched evaluation.


def _wolfe_search(x: Tensor, d: Tensor, t: float, f0: float, g0: Tensor, gtd0: float, max_ls: int, tol: float):
    """Strong-Wolfe line search (Nocedal & Wright, algorithms 3.5 and 3.6, cubic steps; the
    same rules as torch's L-BFGS) along ``d`` from ``x`` with loss f0, gradient g0 and slope
    gtd0, first step ``t``. Yields points, returns (loss, gradient, step, evaluations)."""
    c1, c2 = 1e-4, 0.9
    d_max = float(d.abs().max())

    def probe(step: float):
        f, g = yield x + step * d
        return (step, f, g, float(g.dot(d)))

    cur = yield from probe(t)
    prev = (0.0, f0, g0, gtd0)
    evals, n = 1, 0
    bracket = None
    while n < max_ls:  # grow the step until an interval brackets a Wolfe point
        t, f, _, gtd = cur
        if f > f0 + c1 * t * gtd0 or (n > 1 and f >= prev[1]):
            bracket = [prev, cur]
            break
        if abs(gtd) <= -c2 * gtd0:
            return f, cur[2], t, evals
        if gtd >= 0:
            bracket = [prev, cur]
            break
        step = _cubic_step(prev[0], prev[1], prev[3], t, f, gtd, t + 0.01 * (t - prev[0]), 10 * t)
        prev, cur = cur, (yield from probe(step))
        evals, n = evals + 1, n + 1
    if bracket is None:  # out of evaluations while still growing
        bracket = [(0.0, f0, g0, gtd0), cur]
    low = 0 if bracket[0][1] <= bracket[1][1] else 1
    stuck = False
    while n < max_ls:  # shrink the interval around the Wolfe point
        (ta, fa, _, ga), (tb, fb, _, gb) = bracket
        a, b = min(ta, tb), max(ta, tb)
        if (b - a) * d_max < tol:
            break
        step = _cubic_step(ta, fa, ga, tb, fb, gb, a, b)
        eps = 0.1 * (b - a)
        if min(b - step, step - a) < eps:  # too close to an end: move in unless just moved
            if stuck or step >= b or step <= a:
                step = b - eps if abs(step - b) < abs(step - a) else a + eps
                stuck = False
            else:
                stuck = True
        else:
            stuck = False
        new = yield from probe(step)
        evals, n = evals + 1, n + 1
        high = 1 - low
        if new[1] > f0 + c1 * step * gtd0 or new[1] >= bracket[low][1]:
            bracket[high] = new
            low = 0 if bracket[0][1] <= bracket[1][1] else 1
            continue
        if abs(new[3]) <= -c2 * gtd0:
            bracket[low] = new
            break
        if new[3] * (bracket[high][0] - bracket[low][0]) >= 0:
            bracket[high] = bracket[low]
        bracket[low] = new
    t, f, g, _ = bracket[low]
    return f, g, t, evals


def _lbfgs_path(x: Tensor, solver: SolverConfig):
    """L-BFGS from the flat point ``x`` (torch's ``optim.LBFGS`` algorithm: the same steps and
    evaluation budget of 1.25 per iteration, plus the convergence test of
    :class:`SolverConfig`) as a coroutine (see above); returns (point, stats)."""
    max_eval = solver.iterations * 5 // 4
    tol_grad, tol_change = solver.tolerance_grad, solver.tolerance_change
    # the two-loop recursion's scalars: Python floats on the host; on a GPU 0-d tensors, so
    # that its 2 x history reads do not wait for the device at every iteration
    scalar = float if x.device == torch.device("cpu") else (lambda t: t)
    loss, g = yield x
    evals = 1
    if float(g.abs().max()) <= tol_grad:
        return x, SolverStats(0, evals, "tolerance", loss, float(g.norm()))
    dirs: list[Tensor] = []  # y = g_k+1 - g_k
    steps: list[Tensor] = []  # s = x_k+1 - x_k
    rho: list[float] = []
    H_diag = 1.0
    d = prev_g = None
    t = 0.0
    history = [loss]
    n_iter, stop = 0, "iterations"
    while n_iter < solver.iterations:
        n_iter += 1
        if n_iter == 1:
            d = -g
        else:
            y, s = g - prev_g, d * t
            ys = float(y.dot(s))
            if ys > 1e-10:
                if len(dirs) == solver.history:  # limited memory: forget the oldest pair
                    del dirs[0], steps[0], rho[0]
                dirs.append(y)
                steps.append(s)
                rho.append(1.0 / ys)
                H_diag = ys / float(y.dot(y))
            q = -g
            alpha = [0.0] * len(dirs)
            for i in range(len(dirs) - 1, -1, -1):
                alpha[i] = scalar(steps[i].dot(q)) * rho[i]
                q = q - alpha[i] * dirs[i]
            d = q * H_diag
            for i in range(len(dirs)):
                beta = scalar(dirs[i].dot(d)) * rho[i]
                d = d + (alpha[i] - beta) * steps[i]
        prev_g, prev_loss = g, loss
        t = min(1.0, 1.0 / float(g.abs().sum())) if n_iter == 1 else 1.0
        gtd = float(g.dot(d))
        if gtd > -tol_change:
            stop = "tolerance"
            break
        loss, g, t, ls_evals = yield from _wolfe_search(x, d, t, loss, g, gtd, max_eval - evals, tol_change)
        x = x + t * d
        evals += ls_evals
        history.append(loss)
        if n_iter == solver.iterations:
            break
        if evals >= max_eval:
            stop = "evaluations"
            break
        if (
            float(g.abs().max()) <= tol_grad
            or float((d * t).abs().max()) <= tol_change
            or abs(loss - prev_loss) < tol_change
        ):
            stop = "tolerance"
            break
        if solver.gtol > 0 and float(g.norm()) <= solver.gtol:
            stop = "converged: gradient"
            break
        if solver.ftol > 0 and len(history) > solver.window:
            before = history[-1 - solver.window]
            if before - loss <= solver.ftol * max(abs(before), abs(loss), 1e-12):
                stop = "converged: loss"
                break
    return x, SolverStats(n_iter, evals, stop, loss, float(g.norm()))


def lbfgs(params: Sequence[Tensor], loss_fn: Callable[[], Tensor], solver: SolverConfig) -> SolverStats:
    """Minimise the scalar ``loss_fn()`` over ``params`` with L-BFGS (strong-Wolfe line search,
    unit step); see :func:`_lbfgs_path`. The parameters end at the solution."""
    return lbfgs_per_body(params, lambda: loss_fn().reshape(1), solver, per_body=False)[0]


def lbfgs_per_body(
    params: Sequence[Tensor], losses_fn: Callable[[], Tensor], solver: SolverConfig, per_body: bool = True
) -> list[SolverStats]:
    """B independent problems solved together: ``losses_fn()`` returns the B per-body losses
    (B,), body b's loss depending only on row b of every parameter (each (B, ...)). Each body
    runs its own L-BFGS, exactly as it would alone; every evaluation is one batched call for
    all B (a finished body is evaluated at its solution and ignored), which on a CPU costs far
    less than B calls. ``per_body=False``: one problem over all parameters (loss summed).
    Returns each body's :class:`SolverStats`; the parameters end at the solutions."""
    params = list(params)
    if solver.iterations <= 0:
        return [SolverStats(0, 0, "none")] * (params[0].shape[0] if per_body else 1)
    B = params[0].shape[0] if per_body else 1
    if per_body and any(p.shape[0] != B for p in params):
        raise ValueError(f"per-body solving needs every parameter's first axis to be the B={B} bodies")

    def flat() -> Tensor:  # (B, n) current points
        return torch.cat([p.detach().reshape(B, -1) for p in params], 1)

    def place(X: Tensor) -> None:
        offset = 0
        for p in params:
            n = p[0].numel() if per_body else p.numel()
            p.copy_(X[:, offset : offset + n].reshape(p.shape))
            offset += n

    def evaluate() -> tuple[list[float], Tensor]:  # per-body losses and (B, n) gradients
        with torch.enable_grad():
            losses = losses_fn()
            grads = torch.autograd.grad(losses.sum(), params, allow_unused=True)
        G = torch.cat([(torch.zeros_like(p) if g is None else g).reshape(B, -1) for p, g in zip(params, grads)], 1)
        return losses.detach().reshape(B).tolist(), G

    X = flat()
    paths = [_lbfgs_path(X[b], solver) for b in range(B)]
    stats: list[SolverStats | None] = [None] * B
    with torch.no_grad():
        rows = [path.send(None) for path in paths]
        while True:
            place(torch.stack(rows))
            losses, G = evaluate()
            for b, path in enumerate(paths):
                if stats[b] is not None:
                    continue
                try:
                    rows[b] = path.send((losses[b], G[b]))
                except StopIteration as done:
                    rows[b], stats[b] = done.value
            if all(st is not None for st in stats):
                break
        place(torch.stack(rows))
    return stats


class BodyFit:
    """B bodies being fitted: the parameters, the regularisers and the solver call.

    body: callable ``(rotmats=(B, 24, 3, 3), betas=(B, K), transl=(B, 3)) -> posed`` (a
    :class:`~mvcap.body.BodyModel`, or anything cheaper that poses what the data terms need);
    rotmats (B, 24, 3, 3), betas (B, K) (or (1, K) with ``shared_betas``), transl (B, 3): the
    initial estimate (its dtype is the fit's); free_joints: the first joints that move (24:
    all, 1: the root alone); betas_step (K,): the betas are optimised as ``betas_init + z *
    betas_step`` (rescaling so weak components move as fast as strong ones), default 1;
    betas_ref (1 or B, K): target of the shape term (default: the initial betas);
    prev_pose_rotvecs (B, 24, 3): the previous frame's pose for the temporal term;
    shared_betas: one shape for all B bodies (its shape term counted once, not per body);
    reduce: "sum" or "mean" of the per-body losses in the solver's objective.

    :meth:`solve` can be called repeatedly (e.g. with new data terms after re-finding
    correspondences); the parameters and the regularisers' reference (the initial estimate)
    carry over.
    """

    def __init__(
        self,
        body: Callable,
        rotmats: Tensor,
        betas: Tensor,
        transl: Tensor,
        reg: Regularisers = Regularisers(),
        *,
        free_joints: int = 24,
        optimize_transl: bool = True,
        optimize_betas: bool = False,
        shared_betas: bool = False,
        betas_step: Tensor | None = None,
        betas_ref: Tensor | None = None,
        prev_pose_rotvecs: Tensor | None = None,
        reduce: str = "sum",
    ):
        if rotmats.ndim != 4 or rotmats.shape[1:] != (24, 3, 3):
            raise ValueError(f"rotmats must be (B, 24, 3, 3), got {tuple(rotmats.shape)}")
        if not 1 <= free_joints <= 24:
            raise ValueError(f"free_joints must be in 1..24, got {free_joints}")
        if reduce not in ("sum", "mean"):
            raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")
        B = rotmats.shape[0]
        dtype, device = rotmats.dtype, rotmats.device
        self.body, self.reg, self.reduce, self.shared_betas = body, reg, reduce, shared_betas
        self.R_init, self.betas0, self.transl0 = rotmats, betas.to(dtype), transl.to(dtype)
        self.free_joints = free_joints
        self.betas_step = None if betas_step is None else betas_step.to(dtype)
        self.betas_ref = None if betas_ref is None else betas_ref.to(dtype)
        self.prev_body = None
        if prev_pose_rotvecs is not None and reg.w_temporal > 0:
            self.prev_body = prev_pose_rotvecs.to(dtype)[:, 1:]
        self.prior = default_pose_prior() if reg.w_prior > 0 else None
        self.delta = torch.zeros(B, free_joints, 3, dtype=dtype, device=device, requires_grad=True)
        self.d_transl = torch.zeros(B, 3, dtype=dtype, device=device, requires_grad=optimize_transl)
        self.d_betas = torch.zeros_like(self.betas0, requires_grad=optimize_betas)
        self.params = (
            [self.delta] + ([self.d_transl] if optimize_transl else []) + ([self.d_betas] if optimize_betas else [])
        )
        self.optimize_betas = optimize_betas
        self.stats: list[SolverStats] = []  # one per solve

    def rotmats(self) -> Tensor:
        """Current joint rotations (B, 24, 3, 3)."""
        if self.free_joints == 24:
            return self.R_init @ _so3_exp(self.delta)
        f = self.free_joints
        return torch.cat([self.R_init[:, :f] @ _so3_exp(self.delta), self.R_init[:, f:]], 1)

    def betas(self) -> Tensor:
        """Current betas (B, K) (or (1, K) when shared)."""
        step = self.d_betas if self.betas_step is None else self.d_betas * self.betas_step
        return self.betas0 + step

    def transl(self) -> Tensor:
        return self.transl0 + self.d_transl

    def pose_rotvecs(self) -> Tensor:
        return roma.rotmat_to_rotvec(self.rotmats())

    def pose(self, rotmats: Tensor | None = None):
        """The posed body for the current parameters (what the data terms receive)."""
        rotmats = self.rotmats() if rotmats is None else rotmats
        betas = self.betas()
        if self.shared_betas:
            betas = betas.expand(rotmats.shape[0], -1)
        return self.body(rotmats=rotmats, betas=betas, transl=self.transl())

    def _shape_term(self) -> Tensor:
        """w_betas |betas - betas_ref|^2 per row of the betas parameter."""
        if self.betas_ref is None:
            d = self.d_betas if self.betas_step is None else self.d_betas * self.betas_step
        else:
            d = self.betas() - self.betas_ref
        return self.reg.w_betas * (d**2).sum(-1)

    def losses(self, terms: Sequence[DataTerm]) -> Tensor:
        """Per-body objective (B,): the data terms plus the regularisers (a shared shape's term
        is not included; see :meth:`objective`)."""
        rotmats = self.rotmats()
        posed = self.pose(rotmats)
        data = sum(term(posed) for term in terms)
        return data + self.regularisers(rotmats)

    def regularisers(self, rotmats: Tensor) -> Tensor:
        """The regularisers (B,) at the current parameters, ``rotmats`` (B, 24, 3, 3) being
        :meth:`rotmats` (a shared shape's term excluded, as in :meth:`losses`)."""
        reg = self.reg
        loss = reg.w_init * (self.delta**2).sum((-1, -2))
        # each regulariser reads the rotation matrices at hand: the limits their Euler angles
        # directly, the prior and the temporal term one shared rotvec conversion of joints 1..23
        if reg.w_limits > 0:
            loss = loss + reg.w_limits * limit_violation_rotmats(rotmats)
        if self.prior is not None or self.prev_body is not None:
            body = _so3_log(rotmats[:, 1:])  # (B, 23, 3)
            if self.prior is not None:
                loss = loss + reg.w_prior * self.prior.body(body)
            if self.prev_body is not None:
                loss = loss + reg.w_temporal * ((body - self.prev_body) ** 2).sum((-1, -2))
        if self.optimize_betas and not self.shared_betas:
            loss = loss + self._shape_term()
        return loss

    def objective(self, terms: Sequence[DataTerm]) -> Tensor:
        """The scalar the solver minimises."""
        per_body = self.losses(terms)
        total = per_body.sum() if self.reduce == "sum" else per_body.mean()
        if self.optimize_betas and self.shared_betas:
            total = total + self._shape_term().sum()
        return total

    def solve(self, terms: Sequence[DataTerm], solver: SolverConfig = SolverConfig(), per_body: bool = False) -> int:
        """Run the solver on ``terms``; returns its iterations (:attr:`stats` keeps each run's
        :class:`SolverStats`). ``per_body``: each body is its own problem with its own L-BFGS
        (bodies that share nothing, e.g. independent frames), evaluated together
        (:func:`lbfgs_per_body`); the run's stats are then a list, one per body, and the
        iterations returned the most any body ran."""
        if not per_body:
            stats = lbfgs(self.params, lambda: self.objective(terms), solver)
            self.stats.append(stats)
            return stats.iterations
        if self.shared_betas and self.optimize_betas:
            raise ValueError("bodies sharing one shape are one problem: solve them with per_body=False")
        per = lbfgs_per_body(self.params, lambda: self.losses(terms), solver)
        self.stats.append(per)
        return max(st.iterations for st in per)


# ------------------------------------------------------------------------------------------
# the 2D fit
# ------------------------------------------------------------------------------------------
def fit_body(
    model: BodyModel,
    rig: Rig,
    init: BodyParams,
    targets: Targets,
    cfg: FitConfig = FitConfig(),
    prev_pose_rotvecs: Tensor | None = None,
    independent_views: bool = False,
    extra_terms: Sequence[DataTerm] = (),
    independent_frames: bool = False,
) -> FitResult:
    """Fit pose (and root translation, optionally shape) to 2D targets in all views.

    init: B frames of initial estimates (betas: the subject's known shape); targets for B
    frames and the rig's V views; prev_pose_rotvecs (B, 24, 3) for the temporal term. With
    ``independent_views`` every view gets its own body (returned pose/transl/betas have shape
    (B, V, ...)). extra_terms: more data terms (e.g. :mod:`mvcap.cues`' keypoints and
    silhouettes) added to the objective; joint fits only. ``independent_frames``: the B frames
    share nothing (no temporal term between them), so each gets its own L-BFGS, exactly as if
    fitted alone, while every loss evaluation is one batched call (see
    :func:`lbfgs_per_body`); otherwise one L-BFGS runs over all frames' summed losses.
    """
    t0 = time.perf_counter()
    B, V = targets.uv.shape[:2]
    if extra_terms and independent_views:
        raise ValueError("extra_terms apply to joint fits only (independent views fit one body per view)")
    if V != len(rig):
        raise ValueError(f"targets have {V} views but the rig has {len(rig)} cameras")
    if not isinstance(init, BodyParams):
        raise TypeError(f"init must be a BodyParams, got {type(init).__name__}")
    if len(init) != B:
        raise ValueError(f"init has {len(init)} frames but the targets have B={B}")
    dtype = torch.float32
    device = model.v_template.device
    init_t = init.to_torch(device=device, dtype=dtype)
    cams = rig.tensors(device=device, dtype=dtype)
    dist = cams["dist"] if targets.distorted else None
    uv_t = targets.uv.to(dtype)
    w_t = targets.weight.to(dtype).clamp_min(0)

    # In independent mode the batch is (B*V) bodies, each seen by one view.
    expand = (
        (lambda x: x[:, None].expand(B, V, *x.shape[1:]).reshape(B * V, *x.shape[1:]))
        if independent_views
        else (lambda x: x)
    )
    prev = expand(prev_pose_rotvecs.to(dtype)) if prev_pose_rotvecs is not None else None
    betas0 = expand(init_t["betas"])
    # With the shape held, the shaped rest body is computed once, and only the vertices the
    # data need are skinned: those with a target in some view (none for joint targets).
    # Other data terms may read any vertex, so with extra terms the whole mesh is posed.
    body, keep = model, None
    if not cfg.optimize_betas:
        if extra_terms:
            keep = None
        elif targets.points == "joints":
            keep = torch.zeros(0, dtype=torch.long)
        else:
            keep = torch.nonzero((w_t > 0).flatten(0, 1).any(0)).flatten()
        body = model.fixed_shape(betas0, keep)
    if keep is not None and targets.points == "vertices":
        uv_t, w_t = uv_t[:, :, keep], w_t[:, :, keep]
    fit = BodyFit(
        body,
        roma.rotvec_to_rotmat(expand(init_t["pose_rotvecs"])),
        betas0,
        expand(init_t["transl"]),
        cfg.regularisers,
        optimize_transl=cfg.optimize_transl,
        optimize_betas=cfg.optimize_betas,
        prev_pose_rotvecs=prev,
    )

    # pinhole targets: the intrinsics folded into the extrinsics, one product per closure
    P = cams["K"] @ torch.cat([cams["R_world2cam"], cams["t_world2cam"][..., None]], -1)  # (V, 3, 4)

    def project_points(points: Tensor) -> Tensor:  # (nb, P, 3) -> (B, V, P, 2)
        if dist is None and not independent_views:
            uvw = torch.einsum("vij,bnj->bvni", P[..., :3], points) + P[:, None, :, 3]
            return uvw[..., :2] / uvw[..., 2:].clamp(min=1e-6)  # the depth, clamped as cam_to_pixels does
        if independent_views:
            cam = world_to_cam_per_view(points.view(B, V, *points.shape[1:]), cams["R_world2cam"], cams["t_world2cam"])
        else:
            cam = world_to_cam(points, cams["R_world2cam"], cams["t_world2cam"])
        return cam_to_pixels(cam, cams["K"], dist)

    def target_points(posed) -> Tensor:
        return posed.vertices if targets.points == "vertices" else posed.joints

    with torch.no_grad():  # the person's size in each view, from all target points
        whole = model(rotmats=fit.rotmats(), betas=betas0, transl=fit.transl())
        scale = person_scale(project_points(target_points(whole)))  # (B, V)
    wsum = w_t.sum(-1).clamp_min(1e-6)  # (B, V)
    view_has_data = (w_t.sum(-1) > 0).to(dtype)

    # the per-view normalisations folded into constants: rho(d / s) = d^2 / ((sigma s)^2 + d^2)
    # and the weights divided by their sum (w_data, views without data: 0)
    gm_scale = ((cfg.gm_sigma * scale) ** 2)[..., None]  # (B, V, 1) pixels^2
    w_norm = w_t * (cfg.w_data * view_has_data / wsum)[..., None]  # (B, V, P)

    def reprojection(posed) -> Tensor:  # per body: (B,), or (B*V,) with independent views
        sq = ((project_points(target_points(posed)) - uv_t) ** 2).sum(-1)  # (B, V, P) pixels^2
        data = (w_norm * (sq / (gm_scale + sq))).sum(-1)  # (B, V)
        return data.reshape(B * V) if independent_views else data.sum(-1)

    n_iter = fit.solve([reprojection, *extra_terms], cfg.solver, per_body=independent_frames)

    with torch.no_grad():
        loss = fit.losses([reprojection])
        if independent_views:
            loss = loss.view(B, V).sum(-1)
        uv = project_points(target_points(fit.pose()))
        dist_px = (uv - uv_t).norm(dim=-1)
        residual = (w_t * dist_px).sum(-1) / wsum
        residual = torch.where(view_has_data > 0, residual, torch.full_like(residual, float("nan")))
        pose, transl, betas_out = fit.pose_rotvecs(), fit.transl(), fit.betas()
        if independent_views:
            pose, transl, betas_out = (x.view(B, V, *x.shape[1:]) for x in (pose, transl, betas_out))
    frame_iterations: tuple[int, ...] = ()
    if independent_frames:  # one stats entry per body; with independent views B*V bodies
        per = [st.iterations for st in fit.stats[-1]]
        frame_iterations = tuple(max(per[b * V : (b + 1) * V]) for b in range(B)) if independent_views else tuple(per)
        evaluations = max(st.evaluations for st in fit.stats[-1])
    else:
        evaluations = sum(st.evaluations for st in fit.stats)
    seconds = time.perf_counter() - t0
    return FitResult(pose, betas_out, transl, loss, residual, n_iter, seconds, evaluations, frame_iterations)
