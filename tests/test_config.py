from dataclasses import dataclass, field
from typing import Literal, Optional, Tuple

import pytest

from freqd.config import ConfigError, check, from_dict, merge, parse_overrides, to_dict
from freqd.train.config import TrainConfig


@dataclass
class Inner:
    alpha: float = 0.5

    def __post_init__(self):
        check(0 <= self.alpha <= 1, "inner.alpha", "must be in [0, 1]")


@dataclass
class Outer:
    n: int = 1
    name: Literal["a", "b"] = "a"
    ks: Tuple[int, ...] = (10, 20)
    opt: Optional[float] = None
    flag: bool = False
    inner: Inner = field(default_factory=Inner)


def test_strings_from_command_line_are_coerced():
    cfg = from_dict(Outer, parse_overrides(["n=3", "name=b", "ks=5,10", "opt=0.1", "flag=true", "inner.alpha=0.25"]))
    assert cfg == Outer(3, "b", (5, 10), 0.1, True, Inner(0.25))
    assert to_dict(cfg) == {"n": 3, "name": "b", "ks": [5, 10], "opt": 0.1, "flag": True, "inner": {"alpha": 0.25}}


def test_misspelt_key_is_an_error_with_a_hint():
    with pytest.raises(ConfigError, match=r"unknown option 'inner.alhpa'.*did you mean 'inner.alpha'"):
        from_dict(Outer, {"inner": {"alhpa": 0.1}})
    with pytest.raises(ConfigError, match="unknown option 'nn'"):
        from_dict(Outer, {"nn": 1})


@pytest.mark.parametrize("over,msg", [
    ({"n": "x"}, "expected an integer"),
    ({"name": "c"}, "not one of"),
    ({"flag": "maybe"}, "true/false"),
    ({"inner": {"alpha": 2}}, "inner.alpha"),
    ({"opt": "nan"}, "NaN"),
])
def test_bad_values_name_the_option(over, msg):
    with pytest.raises(ConfigError, match=msg):
        from_dict(Outer, over)


def test_merge_is_deep_and_later_wins():
    assert merge({"a": {"x": 1, "y": 2}, "b": 1}, {"a": {"y": 3}}) == {"a": {"x": 1, "y": 3}, "b": 1}


def test_train_config_validation():
    with pytest.raises(ConfigError, match="train.monitor"):
        TrainConfig(monitor="ndcg@7")
    with pytest.raises(ConfigError, match="train.lr"):
        TrainConfig(lr=0)
    with pytest.raises(ConfigError, match="train.weight_decay"):
        TrainConfig(optimizer="sparse_adam")
    assert TrainConfig(ks=(20, 10, 10)).ks == (10, 20)


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["novalue"])
