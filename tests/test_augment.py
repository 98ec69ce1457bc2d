"""What real footage adds to a training photo (mvcap.nets.augment) and its use in the data."""

from __future__ import annotations

import numpy as np
import pytest

from mvcap.nets import augment as A


def _photo(H=64, W=80, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    base = np.stack([xx * 2, yy * 3, 128 + 40 * np.sin(xx / 5)], -1)
    return np.clip(base + rng.normal(0, 3, (H, W, 3)), 0, 255).astype(np.float32)


def _person(H=64, W=80):
    yy, xx = np.mgrid[0:H, 0:W]
    return ((xx - 40) / 10.0) ** 2 + ((yy - 36) / 22.0) ** 2 < 1


def test_compression_keeps_the_picture_and_loses_detail_with_quality():
    p = _photo()
    hi, lo = A.compress(p, 95), A.compress(p, 5)
    assert hi.shape == p.shape and hi.dtype == np.float32
    e_hi, e_lo = np.abs(hi - p).mean(), np.abs(lo - p).mean()
    assert e_hi < 3.0 and e_lo > 2 * e_hi


def test_motion_blur_spreads_a_point_along_its_streak():
    p = np.zeros((31, 31, 3), np.float32)
    p[15, 15] = 900.0
    h = A.motion_blur(p, 7.0, 0.0)
    assert h[..., 0].sum() == pytest.approx(900.0, rel=1e-4)  # nothing lost
    rows, cols = np.nonzero(h[..., 0] > 1e-3)
    assert set(rows) == {15} and cols.min() <= 12 and cols.max() >= 18  # horizontal, ~7 px
    v = A.motion_blur(p, 7.0, np.pi / 2)
    rows, cols = np.nonzero(v[..., 0] > 1e-3)
    assert set(cols) == {15} and rows.max() - rows.min() >= 6
    assert np.array_equal(A.motion_blur(p, 0.5, 1.0), p)  # under a pixel: unchanged


def test_loose_layer_adds_only_beyond_the_silhouette_in_the_person_colours():
    p, person = _photo(), _person()
    p[person] = (200.0, 30.0, 30.0)  # a red person
    out, alpha = A.loose_layer(p, person, np.random.default_rng(1), 4, (0.2, 0.3))
    assert np.array_equal(out[person], p[person])  # the body's pixels stay
    assert alpha[person].max() == 0 and alpha.max() > 0.9
    added = alpha > 0.99
    assert added.sum() > 30
    # filled with the nearest body colour (red) under a shade, not the background's
    rgb = out[added]
    assert (rgb[:, 0] > 2 * rgb[:, 1]).all()
    assert np.array_equal(out[alpha == 0], p[alpha == 0])
    # no patches, or no person: unchanged
    same, a0 = A.loose_layer(p, person, np.random.default_rng(1), 0, (0.2, 0.3))
    assert np.array_equal(same, p) and a0.max() == 0


def test_clutter_goes_behind_what_stands_in_front():
    p, person = _photo(), _person()
    front = person.astype(np.float32)
    out = A.clutter(p, np.random.default_rng(2), 12, (0.3, 0.6), behind=front)
    assert np.array_equal(out[person], p[person])
    assert np.abs(out - p)[~person].mean() > 5  # the room changed
    occluded = A.clutter(p, np.random.default_rng(2), 12, (0.3, 0.6), textures=(_photo(seed=3),))
    assert np.abs(occluded - p)[person].mean() > 5  # an occluder covers the person too
