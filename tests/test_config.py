from dataclasses import dataclass, field

import pytest

from mvcap.config import ConfigError, load_config, parse_overrides


@dataclass(frozen=True)
class Inner:
    iterations: int = 10
    lr: float = 0.01
    size: tuple[int, int] = (512, 512)


@dataclass(frozen=True)
class Outer:
    name: str = "x"
    inner: Inner = field(default_factory=Inner)
    views: tuple[str, ...] = ()


def test_load_with_file_and_overrides(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('name = "run"\n[inner]\niterations = 5\nsize = [256, 128]\n')
    cfg = load_config(Outer, p, ["inner.lr=1", "views=['cam1','cam2']"])
    assert cfg == Outer("run", Inner(5, 1.0, (256, 128)), ("cam1", "cam2"))
    assert isinstance(cfg.inner.lr, float)


def test_unknown_key_names_valid_ones(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[inner]\niteration = 5\n")
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) \['iteration'\].*iterations"):
        load_config(Outer, p)


def test_wrong_type_and_bad_override():
    with pytest.raises(ConfigError, match="inner.iterations"):
        load_config(Outer, None, {"inner": {"iterations": "many"}})
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["oops"])
    assert parse_overrides(["fusion=refit"]) == {"fusion": "refit"}
