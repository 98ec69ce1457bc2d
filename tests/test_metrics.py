import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from mvcap.metrics import (
    METRIC_KEYS,
    epe,
    evaluate_body,
    mpjpe,
    n_mpjpe,
    n_pve,
    pa_mpjpe,
    pa_pve,
    procrustes_align,
    pve,
    scale_align,
)


def points(seed=0, B=3, K=24):
    return np.random.default_rng(seed).normal(size=(B, K, 3)) * 0.4


def test_similarity_transform_gives_zero_pa_error():
    gt = points()
    R = Rotation.from_rotvec([0.3, -1.2, 0.7]).as_matrix()
    pred = 1.7 * gt @ R.T + np.array([0.5, -2.0, 3.0])
    assert np.allclose(procrustes_align(pred, gt), gt, atol=1e-9)
    assert np.abs(pa_mpjpe(pred, gt)).max() < 1e-9
    assert mpjpe(pred, gt).min() > 0.1
    # rigid alignment cannot undo the scale
    assert np.abs(procrustes_align(pred, gt, scale=False) - gt).max() > 1e-3


def test_constant_offset():
    gt = points()
    pred = gt + np.array([0.006, 0.0, 0.008])  # 10 mm
    assert np.allclose(mpjpe(pred, gt), 0.010)
    assert np.allclose(mpjpe(pred, gt, root_aligned=True), 0.0, atol=1e-12)
    assert np.allclose(pa_mpjpe(pred, gt), 0.0, atol=1e-9)
    assert np.allclose(n_mpjpe(pred, gt), 0.0, atol=1e-12)
    m = evaluate_body(pred, gt, pred, gt)
    assert set(m) == set(METRIC_KEYS)
    assert m["MPJPE"] == pytest.approx(10.0) and m["PVE"] == pytest.approx(10.0)
    for k in ("PA-MPJPE", "N-MPJPE", "PA-PVE", "N-PVE"):
        assert m[k] == pytest.approx(0.0, abs=1e-6)
    assert evaluate_body(pred, gt, root_aligned=True)["MPJPE"] == pytest.approx(0.0, abs=1e-9)
    assert "PVE" not in evaluate_body(pred, gt)


def test_n_mpjpe_removes_scale_only():
    gt = points(1)
    root = gt[:, :1]
    scaled = root + 0.8 * (gt - root) + np.array([1.0, 2.0, 3.0])  # scale about the root + shift
    assert np.allclose(n_mpjpe(scaled, gt), 0.0, atol=1e-12)
    assert np.allclose(scale_align(scaled, gt), gt, atol=1e-12)
    # hand-computed: a root-relative 2-point pose (0,0,0),(1,0,0) vs gt (0,0,0),(0,1,0):
    # s = <p,g>/<p,p> = 0 -> aligned (0,0,0),(0,0,0) -> errors 0 and 1 -> N-MPJPE 0.5
    p = np.array([[[0.0, 0, 0], [1, 0, 0]]])
    g = np.array([[[0.0, 0, 0], [0, 1, 0]]])
    assert np.allclose(n_mpjpe(p, g), 0.5)
    # a rotation is not removed by N-, but is by PA-
    R = Rotation.from_rotvec([0, 0, 0.5]).as_matrix()
    rotated = gt @ R.T
    assert n_mpjpe(rotated, gt).min() > 1e-3
    assert np.allclose(pa_mpjpe(rotated, gt), 0.0, atol=1e-9)
    # optimal scale: N-MPJPE never exceeds root-aligned MPJPE
    noisy = gt + np.random.default_rng(5).normal(size=gt.shape) * 0.05
    assert np.all(n_mpjpe(noisy, gt) <= mpjpe(noisy, gt, root_aligned=True) + 1e-12)


def test_reflection_is_not_used():
    gt = points(2)
    mirrored = gt * np.array([-1.0, 1.0, 1.0])  # a mirror image is not a similarity transform
    aligned = procrustes_align(mirrored, gt)
    # the result must be a proper rotation of pred (no reflection): check orientation of a triple
    for b in range(gt.shape[0]):
        a, m = aligned[b] - aligned[b].mean(0), mirrored[b] - mirrored[b].mean(0)
        M, *_ = np.linalg.lstsq(m, a, rcond=None)
        assert np.linalg.det(M) > 0
    assert pa_mpjpe(mirrored, gt).min() > 1e-3
    # planar point set (degenerate singular value): still exact
    flat = gt.copy()
    flat[..., 2] = 0
    R = Rotation.from_rotvec([0.2, 0.1, 2.5]).as_matrix()
    assert np.abs(pa_mpjpe(2.0 * flat @ R.T + 1.0, flat)).max() < 1e-9


def test_torch_in_torch_out_and_vertices():
    gt = torch.as_tensor(points(3, K=100))
    pred = gt * 1.1
    for fn in (mpjpe, pa_mpjpe, n_mpjpe, pve, pa_pve, n_pve):
        out = fn(pred, gt)
        assert isinstance(out, torch.Tensor) and out.shape == (3,)
    assert isinstance(mpjpe(pred.numpy(), gt.numpy()), np.ndarray)
    assert mpjpe(pred[0], gt[0]).shape == (1,)  # unbatched -> batch of one
    assert torch.allclose(pa_pve(pred, gt), torch.zeros(3, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(n_pve(pred, gt), torch.zeros(3, dtype=torch.float64), atol=1e-9)
    with pytest.raises(ValueError, match="same"):
        mpjpe(pred, gt[:, :10])


def test_epe_masked():
    gt = np.zeros((2, 4, 5, 2))
    pred = gt.copy()
    pred[..., 0] = 3.0
    pred[..., 1] = 4.0  # error 5 px everywhere
    pred[0, 0, 0] = [100.0, 0.0]  # a huge error on a masked-out pixel
    mask = np.ones((2, 4, 5), bool)
    mask[0, 0, 0] = False
    assert epe(pred, gt, mask) == pytest.approx(5.0)
    assert epe(pred, gt) == pytest.approx((5.0 * 39 + 100.0) / 40)
    assert np.isnan(epe(pred, gt, np.zeros((2, 4, 5))))
    assert epe(
        torch.as_tensor(pred), torch.as_tensor(gt), torch.as_tensor(mask).float()
    ) == pytest.approx(5.0)
