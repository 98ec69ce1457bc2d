import numpy as np
import pytest
import roma
import torch

from mvcap.body import BodyParams
from mvcap.cameras import project
from mvcap.demo import DEMO_RIG
from mvcap.fit import FitConfig, Targets, fit_body, geman_mcclure, person_scale
from mvcap.metrics import evaluate_body
from mvcap.motions import perturb_like_regressor, sample_poses
from mvcap.rigio import load_rig

RIG = load_rig(DEMO_RIG).without_distortion()


def _scene(model, seed=0):
    rng = np.random.default_rng(seed)
    gt_pose = torch.as_tensor(sample_poses(rng, 1), dtype=torch.float32)
    betas = torch.as_tensor(rng.normal(size=(1, 10)) * 0.5, dtype=torch.float32)
    gt_t = torch.tensor([[0.0, 0.95, 0.0]])
    p, t, _ = perturb_like_regressor(rng, gt_pose.numpy(), gt_t.numpy(), betas[0].numpy(), model.parents.numpy())
    return gt_pose, betas, gt_t, torch.as_tensor(p, dtype=torch.float32), torch.as_tensor(t, dtype=torch.float32)


def _errors(model, pose, betas, transl, gt_pose, gt_t):
    with torch.no_grad():
        a = model(pose, betas, transl)
        b = model(gt_pose, betas, gt_t)
    return evaluate_body(a.joints, b.joints, a.vertices, b.vertices)


def test_geman_mcclure_saturates():
    x = torch.tensor([0.0, 0.05**2, 100.0])
    rho = geman_mcclure(x, 0.05)
    assert rho[0] == 0 and abs(rho[1] - 0.5) < 1e-6 and 0.99 < rho[2] < 1.0
    uv = torch.tensor([[[0.0, 0.0], [30.0, 40.0]]])
    assert person_scale(uv).item() == pytest.approx(50.0)


def test_dense_fit_converges_from_regression_like_init(body_model):
    gt_pose, betas, gt_t, init_pose, init_t = _scene(body_model)
    with torch.no_grad():
        gt_verts = body_model(gt_pose, betas, gt_t).vertices
    uv = project(RIG, gt_verts[0]).float()[None]  # exact dense targets, all vertices, 4 views
    targets = Targets(uv, torch.ones(uv.shape[:-1]))
    before = _errors(body_model, init_pose, betas, init_t, gt_pose, gt_t)
    res = fit_body(body_model, RIG, BodyParams(init_pose, betas, init_t), targets, FitConfig(iterations=80))
    after = _errors(body_model, res.pose_rotvecs, betas, res.transl, gt_pose, gt_t)
    assert before["PVE"] > 40
    assert after["PVE"] < 5 and after["MPJPE"] < 5
    assert res.residual_px.shape == (1, 4) and res.residual_px.max() < 1.0


def test_sparse_joint_fit_improves_and_independent_views_shapes(body_model):
    gt_pose, betas, gt_t, init_pose, init_t = _scene(body_model, seed=1)
    with torch.no_grad():
        joints = body_model(gt_pose, betas, gt_t).joints
    uv = project(RIG, joints[0]).float()[None]
    targets = Targets(uv, torch.ones(uv.shape[:-1]), points="joints")
    res = fit_body(body_model, RIG, BodyParams(init_pose, betas, init_t), targets, FitConfig(iterations=60))
    before = _errors(body_model, init_pose, betas, init_t, gt_pose, gt_t)
    after = _errors(body_model, res.pose_rotvecs, betas, res.transl, gt_pose, gt_t)
    assert after["MPJPE"] < 0.5 * before["MPJPE"]

    per_view = fit_body(
        body_model, RIG, BodyParams(init_pose, betas, init_t), targets, FitConfig(iterations=5), independent_views=True
    )
    assert per_view.pose_rotvecs.shape == (1, 4, 24, 3) and per_view.transl.shape == (1, 4, 3)


def test_fit_ignores_views_without_targets(body_model):
    gt_pose, betas, gt_t, init_pose, init_t = _scene(body_model, seed=2)
    with torch.no_grad():
        gt_verts = body_model(gt_pose, betas, gt_t).vertices
    uv = project(RIG, gt_verts[0]).float()[None]
    w = torch.ones(uv.shape[:-1])
    w[:, 1:] = 0  # only view 0 has targets
    res = fit_body(body_model, RIG, BodyParams(init_pose, betas, init_t), Targets(uv, w), FitConfig(iterations=20))
    assert torch.isfinite(res.pose_rotvecs).all()
    assert torch.isnan(res.residual_px[0, 1:]).all() and torch.isfinite(res.residual_px[0, 0])


def test_targets_validate_shapes():
    with pytest.raises(ValueError, match=r"\(B, V, P, 2\)"):
        Targets(torch.zeros(4, 10, 2), torch.zeros(4, 10))
    with pytest.raises(ValueError, match="weight"):
        Targets(torch.zeros(1, 4, 10, 2), torch.zeros(1, 4, 9))
    with pytest.raises(ValueError, match="points"):
        Targets(torch.zeros(1, 4, 10, 2), torch.zeros(1, 4, 10), points="bones")


def test_rotation_parameterisation_starts_at_init(body_model):
    _, betas, _, init_pose, init_t = _scene(body_model, seed=3)
    targets = Targets(torch.zeros(1, 4, 24, 2), torch.zeros(1, 4, 24), points="joints")
    res = fit_body(body_model, RIG, BodyParams(init_pose, betas, init_t), targets, FitConfig(iterations=0))
    diff = roma.rotmat_geodesic_distance(roma.rotvec_to_rotmat(res.pose_rotvecs), roma.rotvec_to_rotmat(init_pose))
    assert diff.max() < 1e-5


def test_kit_takes_any_data_term_and_frees_the_chosen_joints(body_model):
    from mvcap.fit import BodyFit, Regularisers, SolverConfig

    gt_pose, betas, gt_t, init_pose, init_t = _scene(body_model, seed=4)
    with torch.no_grad():
        joints_gt = body_model(gt_pose, betas, gt_t).joints

    def joints_3d(out):  # a caller's own term: 3D joint distances, per body (B,)
        return ((out.joints - joints_gt) ** 2).sum((-1, -2))

    R0 = roma.rotvec_to_rotmat(init_pose)
    fit = BodyFit(body_model, R0, betas, init_t, Regularisers(w_limits=1e-2, w_prior=1e-4))
    with torch.no_grad():
        before = joints_3d(fit.pose()).item()
    n = fit.solve([joints_3d], SolverConfig(iterations=40))
    with torch.no_grad():
        after = joints_3d(fit.pose()).item()
    assert 0 < n <= 40 and after < 0.05 * before

    root = BodyFit(body_model, R0, betas, init_t, free_joints=1)
    root.solve([joints_3d], SolverConfig(iterations=10))
    with torch.no_grad():
        assert torch.equal(root.rotmats()[:, 1:], R0[:, 1:])  # only the root turned
        assert not torch.allclose(root.rotmats()[:, 0], R0[:, 0])

    # a loose convergence tolerance stops early; the default runs the iterations it is given
    loose = BodyFit(body_model, R0, betas, init_t)
    assert loose.solve([joints_3d], SolverConfig(iterations=40, tolerance_change=1e-3)) < n


def test_kit_shared_betas_are_one_shape_with_one_prior_term(body_model):
    from mvcap.fit import BodyFit, Regularisers

    _, betas, _, init_pose, init_t = _scene(body_model, seed=5)
    R = roma.rotvec_to_rotmat(init_pose).expand(3, -1, -1, -1)
    fit = BodyFit(
        body_model, R, betas, init_t.expand(3, -1), Regularisers(w_betas=1.0), optimize_betas=True,
        shared_betas=True, betas_ref=torch.zeros_like(betas),
    )  # fmt: skip
    assert fit.pose().vertices.shape[0] == 3 and fit.betas().shape == (1, 10)
    # no data: the objective is the shape prior |betas|^2, counted once for the three bodies
    assert fit.objective([]).item() == pytest.approx((betas**2).sum().item(), rel=1e-5)


def _rosenbrock_problem():
    x = torch.tensor([-1.2, 1.0, -0.5, 0.8], dtype=torch.float64, requires_grad=True)

    def loss():
        return (100 * (x[1::2] - x[::2] ** 2) ** 2 + (1 - x[::2]) ** 2).sum()

    return x, loss


def test_lbfgs_is_torchs_lbfgs_when_the_convergence_test_is_off():
    from mvcap.fit import SolverConfig, lbfgs

    x, loss = _rosenbrock_problem()
    stats = lbfgs([x], loss, SolverConfig(iterations=25, history=5))
    y, loss_t = _rosenbrock_problem()
    opt = torch.optim.LBFGS([y], lr=1, max_iter=25, history_size=5, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-9, tolerance_change=1e-12)  # fmt: skip

    def closure():
        opt.zero_grad()
        value = loss_t()
        value.backward()
        return value

    opt.step(closure)
    assert stats.iterations == opt.state[y]["n_iter"] and stats.evaluations == opt.state[y]["func_evals"]
    assert torch.allclose(x, y, atol=1e-12) and stats.stop in ("iterations", "evaluations")
    assert stats.loss == pytest.approx(float(loss().detach()), rel=1e-9, abs=1e-15)


def test_lbfgs_on_a_device_keeps_its_recursion_there():
    """On a device the two-loop recursion's scalars stay 0-d tensors (no read per history
    pair); the steps are the host's, up to rounding (checked on the simulated device)."""
    from mvcap.devices import SIMULATED, DeviceAudit
    from mvcap.fit import SolverConfig, lbfgs

    solver = SolverConfig(iterations=25, history=5)
    x, loss = _rosenbrock_problem()
    host = lbfgs([x], loss, solver)
    with DeviceAudit() as audit:
        y = torch.tensor([-1.2, 1.0, -0.5, 0.8], dtype=torch.float64, device=SIMULATED, requires_grad=True)
        on_device = lbfgs([y], lambda: (100 * (y[1::2] - y[::2] ** 2) ** 2 + (1 - y[::2]) ** 2).sum(), solver)
    assert not audit.of_kind("mixed") and not audit.of_kind("error"), audit.report()
    assert on_device.iterations == host.iterations and torch.allclose(y.detach(), x.detach(), atol=1e-9)
    reads = sum(audit.of_kind("sync").values())
    assert reads < 12 * host.iterations  # line search and stopping tests; the recursion adds none


def test_lbfgs_convergence_test_stops_a_converged_fit():
    from mvcap.fit import SolverConfig, lbfgs

    x, loss = _rosenbrock_problem()
    full = lbfgs([x], loss, SolverConfig(iterations=200))
    x, loss = _rosenbrock_problem()
    stopped = lbfgs([x], loss, SolverConfig(iterations=200, ftol=1e-8, gtol=1e-3))
    assert stopped.stop.startswith("converged") and stopped.evaluations < full.evaluations
    assert torch.allclose(x, torch.ones(4, dtype=torch.float64), atol=1e-3)  # at the minimum all the same
    x, loss = _rosenbrock_problem()
    loose = lbfgs([x], loss, SolverConfig(iterations=200, ftol=0.5, window=1))
    assert loose.stop == "converged: loss" and loose.iterations < stopped.iterations
    with pytest.raises(ValueError, match="ftol and gtol must be >= 0"):
        SolverConfig(ftol=-1.0)
    with pytest.raises(ValueError, match="window >= 1"):
        FitConfig(window=0)  # a bad [fit] table fails when the config is read


def test_fit_counts_its_closures_and_fits_joints_without_skinning(body_model):
    gt_pose, betas, gt_t, init_pose, init_t = _scene(body_model, seed=7)
    with torch.no_grad():
        joints = body_model(gt_pose, betas, gt_t).joints
    uv = project(RIG, joints[0]).float()[None]
    res = fit_body(body_model, RIG, BodyParams(init_pose, betas, init_t), Targets(uv, torch.ones(uv.shape[:-1]),
                   points="joints"), FitConfig(iterations=30))  # fmt: skip
    assert res.evaluations >= res.iterations > 0
    before = _errors(body_model, init_pose, betas, init_t, gt_pose, gt_t)["MPJPE"]
    after = _errors(body_model, res.pose_rotvecs, betas, res.transl, gt_pose, gt_t)["MPJPE"]
    assert after < 0.5 * before


def test_lean_rotation_conversions_match_roma():
    from mvcap.fit import _so3_exp, _so3_log

    gen = torch.Generator().manual_seed(0)
    axis = torch.nn.functional.normalize(torch.randn(500, 3, generator=gen, dtype=torch.float64), dim=-1)
    angle = torch.cat([torch.rand(495, 1, generator=gen, dtype=torch.float64) * 3.14,
                       torch.tensor([[0.0], [1e-6], [2.49], [2.51], [3.14159]], dtype=torch.float64)])  # fmt: skip
    rv = axis * angle
    R = roma.rotvec_to_rotmat(rv)
    assert torch.allclose(_so3_exp(rv), R, atol=1e-12)
    assert torch.allclose(_so3_log(R), roma.rotmat_to_rotvec(R), atol=1e-7)
    w = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)  # fits start at delta = 0
    assert torch.autograd.gradcheck(_so3_exp, (w,))
    assert torch.autograd.gradcheck(lambda r: _so3_log(_so3_exp(r)), (rv[:3].clone().requires_grad_(True),))


def _rosenbrock_rows(X):  # (B, 4) -> (B,) one Rosenbrock problem per row
    return (100 * (X[:, 1::2] - X[:, ::2] ** 2) ** 2 + (1 - X[:, ::2]) ** 2).sum(-1)


def test_per_body_lbfgs_runs_each_body_as_if_alone():
    from mvcap.fit import SolverConfig, lbfgs, lbfgs_per_body

    # the third body starts at its minimum: it stops at once while the others go on
    starts = torch.tensor([[-1.2, 1.0, -0.5, 0.8], [0.5, 0.5, 2.0, -1.0], [1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    solver = SolverConfig(iterations=30, history=5, ftol=1e-10)
    X = starts.clone().requires_grad_()
    together = lbfgs_per_body([X], lambda: _rosenbrock_rows(X), solver)
    for b in range(3):
        x = starts[b : b + 1].clone().requires_grad_()
        alone = lbfgs([x], lambda x=x: _rosenbrock_rows(x)[0], solver)
        assert together[b] == alone  # the same iterations, evaluations, stop and final loss
        assert torch.equal(X[b].detach(), x[0].detach())
    assert together[2].iterations == 0 and together[0].iterations > 10
    with pytest.raises(ValueError, match="first axis"):
        lbfgs_per_body([X, torch.zeros(2, requires_grad=True)], lambda: _rosenbrock_rows(X), solver)


def test_independent_frames_fit_as_if_each_alone(body_model):
    scenes = [_scene(body_model, seed=s) for s in (11, 12)]
    inits, targets = [], []
    for gt_pose, betas, gt_t, init_pose, init_t in scenes:
        with torch.no_grad():
            uv = project(RIG, body_model(gt_pose, betas, gt_t).vertices[0]).float()[None]
        inits.append(BodyParams(init_pose, betas, init_t))
        targets.append(Targets(uv, torch.ones(uv.shape[:-1])))
    cfg = FitConfig(iterations=15)
    alone = [fit_body(body_model, RIG, i, t, cfg) for i, t in zip(inits, targets)]
    init = BodyParams(*(np.concatenate([getattr(i, k) for i in inits]) for k in ("pose_rotvecs", "betas", "transl")))
    target = Targets(torch.cat([t.uv for t in targets]), torch.cat([t.weight for t in targets]))
    both = fit_body(body_model, RIG, init, target, cfg, independent_frames=True)
    assert both.frame_iterations == tuple(a.iterations for a in alone)
    for b, a in enumerate(alone):  # the same path up to float rounding of the batched arithmetic
        torch.testing.assert_close(both.pose_rotvecs[b], a.pose_rotvecs[0], atol=1e-4, rtol=0)
        torch.testing.assert_close(both.transl[b], a.transl[0], atol=1e-4, rtol=0)  # 0.1 mm
    joint = fit_body(body_model, RIG, init, target, cfg)
    assert joint.frame_iterations == ()  # one solver over both frames' summed losses
