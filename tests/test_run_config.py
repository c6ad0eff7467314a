"""Run configuration: one set of defaults, every bad value named."""

import math
import tomllib
from pathlib import Path

import pytest

from fedintent.launch.flower_cli import toml_value
from fl_protocol.wire import RUN_CONFIG_DEFAULTS as DEFAULTS
from fl_server.run_config import RunConfigError, check_run_config

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_app_config_equals_the_code_defaults():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["tool"]["flwr"]["app"]["config"] == DEFAULTS


def test_every_key_is_documented_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    missing = [key for key in DEFAULTS if f"`{key}`" not in readme]
    assert not missing


@pytest.mark.parametrize(
    "override,message",
    [
        ({"target-epsilon": -1.0}, "target-epsilon"),
        ({"target-epsilon": 0.0}, "target-epsilon"),
        ({"target-epsilon": math.nan}, "target-epsilon"),
        ({"delta": 1.0}, "delta"),
        ({"num-rounds": 0}, "num-rounds"),
        ({"batch-size": 2.5}, "batch-size"),
        ({"clip-norm": 0.0}, "clip-norm"),
        ({"model": "nope"}, "model"),
        ({"strategy": "fedsgd"}, "strategy"),
        ({"accountant": "moments"}, "accountant"),
        ({"server-momentum": 1.0}, "server-momentum"),
        ({"server-momentum": -0.1}, "server-momentum"),
        ({"server-momentum": 0.8, "strategy": "fedadam"}, "server-momentum applies to"),
        ({"no-such-key": 1}, "no-such-key"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(RunConfigError, match=message):
        check_run_config(override)


def test_infinite_epsilon_means_no_dp_and_is_allowed():
    assert math.isinf(check_run_config({"target-epsilon": math.inf})["target-epsilon"])


@pytest.mark.parametrize("value", ["a/b c", 'quote"d', 3, 0.25, math.inf, True])
def test_toml_values_round_trip(value):
    parsed = tomllib.loads(f"x = {toml_value(value)}")["x"]
    assert parsed == value
