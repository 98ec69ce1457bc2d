from dataclasses import dataclass, field

import pytest

from mvcap.config import ConfigError, load_config, parse_overrides


@dataclass(frozen=True)
class Inner:
    iterations: int = 10
    lr: float = 0.01
    size: tuple[int, int] = (512, 512)


@dataclass(frozen=True)
class Checked:
    iterations: int = 10

    def __post_init__(self):
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")


@dataclass(frozen=True)
class Outer:
    name: str = "x"
    inner: Inner = field(default_factory=Inner)
    views: tuple[str, ...] = ()
    checked: Checked = field(default_factory=Checked)


def test_load_with_file_and_overrides(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('name = "run"\n[inner]\niterations = 5\nsize = [256, 128]\n')
    cfg = load_config(Outer, p, ["inner.lr=1", "views=['cam1','cam2']"])
    assert cfg == Outer("run", Inner(5, 1.0, (256, 128)), ("cam1", "cam2"), Checked())
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


def test_a_configs_own_range_check_names_the_file_and_table(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[checked]\niterations = 0\n")
    with pytest.raises(ConfigError, match=r"c\.toml: \[checked\] iterations must be >= 1, got 0"):
        load_config(Outer, p)
