import numpy as np
import pytest

from mvcap.subject import Subject, SubjectError


def make(rng, **kw):
    args = dict(
        name="bob",
        betas=rng.normal(size=10),
        texture=rng.integers(0, 256, (16, 8, 3), dtype=np.uint8),
        vertex_colors=rng.integers(0, 256, (20, 3), dtype=np.uint8),
        gender="male",
        meta={"scan": "2024-01-01", "n": 3},
    )
    args.update(kw)
    return Subject(**args)


def test_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    s = make(rng)
    assert s.betas.dtype == np.float32 and not s.betas.flags.writeable
    path = s.save(tmp_path / "bob.subject")  # exact path, no suffix added
    assert path.exists() and path.name == "bob.subject"
    loaded = Subject.load(path)
    assert loaded == s
    assert np.array_equal(loaded.texture, s.texture) and loaded.meta == s.meta


def test_adapted_network_round_trip(tmp_path):
    """The adapted network's bytes travel with the subject file and count in equality."""
    rng = np.random.default_rng(2)
    net = bytes(rng.integers(0, 256, 1000, dtype=np.uint8))
    s = make(rng, displacement_net=net)
    loaded = Subject.load(s.save(tmp_path / "bob.npz"))
    assert loaded == s and loaded.displacement_net == net
    assert loaded != make(np.random.default_rng(2), displacement_net=net[:-1] + b"x")
    assert "adapted_net=True" in repr(loaded)
    assert Subject.load(make(rng).save(tmp_path / "plain.npz")).displacement_net is None


def test_adapted_network_in_the_session(tmp_path, tiny_session):
    from mvcap.capture import Session

    rng = np.random.default_rng(3)
    s = make(rng, displacement_net=b"\x00\x01weights", vertex_colors=None)
    with Session.open(tiny_session, "a") as sess:
        sess.write_subject(s)
    with Session.open(tiny_session) as sess:
        assert sess.subject == s and sess.subject.displacement_net == b"\x00\x01weights"


def test_optional_appearance(tmp_path):
    s = Subject("x", np.zeros(10))
    loaded = Subject.load(s.save(tmp_path / "x.npz"))
    assert (
        loaded == s
        and loaded.texture is None
        and loaded.vertex_colors is None
        and loaded.gender == "neutral"
    )


@pytest.mark.parametrize(
    "kw, msg",
    [
        ({"betas": np.zeros(11)}, r"betas must have shape \(10,\)"),
        ({"betas": np.zeros((1, 10))}, r"betas\[0\]"),
        ({"betas": np.full(10, np.nan)}, "NaN"),
        ({"texture": np.zeros((4, 4), np.uint8)}, r"\(Ht, Wt, 3\)"),
        ({"texture": np.zeros((4, 4, 3), np.float32)}, "uint8"),
        ({"vertex_colors": np.zeros((5, 4), np.uint8)}, r"\(N, 3\)"),
        ({"gender": "other"}, "gender"),
        ({"meta": {"a": object()}}, "JSON"),
        ({"name": ""}, "name"),
        ({"displacement_net": "weights.pt"}, "bytes of a weights file"),
        ({"displacement_net": b""}, "bytes of a weights file"),
    ],
)
def test_validation(kw, msg):
    with pytest.raises(SubjectError, match=msg):
        make(np.random.default_rng(1), **kw)


def test_bad_files(tmp_path):
    with pytest.raises(SubjectError, match="does not exist"):
        Subject.load(tmp_path / "missing.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip file at all")
    with pytest.raises(SubjectError, match="not a readable .npz"):
        Subject.load(junk)
    good = make(np.random.default_rng(2)).save(tmp_path / "good.npz")
    trunc = tmp_path / "trunc.npz"
    trunc.write_bytes(good.read_bytes()[:200])
    with pytest.raises(SubjectError, match="truncated or corrupt"):
        Subject.load(trunc)
    other = tmp_path / "other.npz"
    np.savez(other, betas=np.zeros(10))
    with pytest.raises(SubjectError, match="not an mvcap subject file"):
        Subject.load(other)
    npy = tmp_path / "a.npy"
    np.save(npy, np.zeros(10))
    with pytest.raises(SubjectError, match="single .npy"):
        Subject.load(npy)
    bad = tmp_path / "bad.npz"
    np.savez(
        bad,
        format="mvcap-subject",
        format_version=1,
        name="x",
        gender="neutral",
        meta_json="{}",
        betas=np.zeros(9),
    )
    with pytest.raises(SubjectError, match="malformed.*betas"):
        Subject.load(bad)
    newer = tmp_path / "newer.npz"
    np.savez(newer, format="mvcap-subject", format_version=99)
    with pytest.raises(SubjectError, match="upgrade mvcap"):
        Subject.load(newer)
