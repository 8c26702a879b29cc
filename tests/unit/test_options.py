"""Task options: validation names the option, compile_options turns them into wire units."""

from __future__ import annotations

import dataclasses

import pytest

from taskmesh.options import TASK_OPTIONS, TaskOptions, compile_options, validate


def test_valid_options_pass_through_unchanged():
    opts = {"num_cpus": 0.5, "num_gpus": 1, "resources": {"highmem": 2}, "num_returns": 0,
            "max_retries": -1, "retry_exceptions": True, "name": "my-task"}
    assert validate(opts) == opts
    assert validate({}) == {}


def test_unknown_option_lists_the_valid_ones():
    with pytest.raises(ValueError) as info:
        validate({"num_cpu": 1})
    msg = str(info.value)
    assert "'num_cpu'" in msg
    for name in TASK_OPTIONS:
        assert name in msg


@pytest.mark.parametrize("name,bad", [
    ("num_cpus", -1),
    ("num_cpus", "2"),
    ("num_cpus", None),
    ("num_cpus", True),  # bools are not numbers here
    ("num_gpus", -0.5),
    ("num_gpus", [1]),
    ("num_returns", -1),
    ("num_returns", 1.0),
    ("num_returns", 100_001),
    ("num_returns", False),
    ("max_retries", -2),
    ("max_retries", 2.5),
    ("retry_exceptions", 1),
    ("retry_exceptions", "yes"),
    ("name", 42),
    ("resources", [("a", 1)]),
])
def test_bad_values_name_the_option(name, bad):
    with pytest.raises(ValueError) as info:
        validate({name: bad})
    assert name in str(info.value)
    assert repr(bad) in str(info.value)


@pytest.mark.parametrize("resources,fragment", [
    ({1: 2}, "resource names must be strings"),
    ({"x": -1}, "resources['x']"),
    ({"x": "1"}, "resources['x']"),
    ({"CPU": 2}, "num_cpus"),
    ({"GPU": 1}, "num_gpus"),
])
def test_bad_resources_say_what_is_wrong(resources, fragment):
    with pytest.raises(ValueError) as info:
        validate({"resources": resources})
    assert fragment in str(info.value)


def test_the_first_bad_option_is_reported():
    with pytest.raises(ValueError, match="num_cpus"):
        validate({"num_cpus": -1, "bogus": 1})


def test_defaults_compile_to_one_cpu_three_retries_one_return():
    opts = compile_options({})
    assert isinstance(opts, TaskOptions)
    assert opts.resources == {"CPU": 10_000}
    assert (opts.num_returns, opts.max_retries, opts.name) == (1, 3, None)
    assert opts.retry_exceptions is False
    assert all(len(v) == 3 and callable(v[1]) for v in TASK_OPTIONS.values())


def test_compile_options_converts_amounts_to_units_and_drops_zeroes():
    opts = compile_options(validate({
        "num_cpus": 0.25, "num_gpus": 2, "resources": {"highmem": 1.5, "zero": 0},
        "num_returns": 3, "max_retries": 0, "name": "t"}))
    assert opts.resources == {"CPU": 2_500, "GPU": 20_000, "highmem": 15_000}
    assert (opts.num_returns, opts.max_retries, opts.name) == (3, 0, "t")
    assert compile_options({"retry_exceptions": True}).retry_exceptions is True
    assert compile_options({"num_cpus": 0}).resources == {}


def test_compiled_options_are_immutable():
    opts = compile_options({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.num_returns = 5  # type: ignore[misc]
