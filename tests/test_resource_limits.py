"""Times follow Slurm's forms (the first field unbounded, the others 0-59), and resource
values too large for the planner's arrays are spec errors naming task and field, never
an OverflowError."""

from __future__ import annotations

import subprocess
import sys

import pytest

import hpcflow as hf
from hpcflow.errors import SpecError
from hpcflow.model.resources import LIMITS, Resources, parse_time
from hpcflow.spec import load_plan


@pytest.mark.parametrize("text, seconds", [
    ("48:00:00", 172800), ("100:00:00", 360000), ("90:00", 5400), ("00:59", 59),
    ("0:00:59", 59), ("1-0", 86400), ("1-12", 129600), ("2-23:59:59", 259199), ("1-00:30", 88200),
])
def test_slurm_time_forms(text, seconds):
    assert parse_time(text) == seconds


@pytest.mark.parametrize("text, part", [
    ("1:75:00", "minutes must be 0-59, got 75"), ("0:00:99", "seconds must be 0-59, got 99"),
    ("5:60", "seconds must be 0-59, got 60"), ("1-24:00:00", "hours must be 0-23, got 24"),
    ("1-01:60", "minutes must be 0-59, got 60"),
])
def test_clock_fields_out_of_range_are_errors(text, part):
    with pytest.raises(ValueError, match=part):
        parse_time(text)


def _spec(tmp_path, resources: str, defaults: str = ""):
    path = tmp_path / "wf.yaml"
    path.write_text(f"name: big\n{defaults}tasks:\n  - id: first\n    shell: 'true'\n"
                    f"  - id: heavy\n    shell: 'true'\n    resources: {{{resources}}}\n")
    return path


@pytest.mark.parametrize("resources, field, message", [
    ("cores: 9999999999", "cores", "must be at most 1,048,576, got 9999999999"),
    ("gpus: 99999999999999999999", "gpus", "must be at most 1,048,576"),
    ("ranks: 3000000000", "ranks", "must be at most 1,048,576, got 3000000000"),
    ("memory: 99999999999999999999T", "memory", "memory must be at most 1024T"),
    ("memory: 99999999999999", "memory", "memory must be at most 1024T, got 99999999999999"),
    ("time: 99999999999999999999999d", "time", "time must be at most 36,500 days"),
    ("time: 1.0e+300", "time", "time must be at most 36,500 days"),
    ("time: '1:75:00'", "time", "minutes must be 0-59, got 75"),
])
def test_too_large_values_name_task_and_field(tmp_path, resources, field, message):
    with pytest.raises(SpecError) as caught:
        load_plan(_spec(tmp_path, resources))
    err = caught.value
    assert (err.task, err.field, err.location.line) == ("heavy", f"resources.{field}", 7)
    assert message in err.message


def test_a_too_large_default_names_the_defaults(tmp_path):
    with pytest.raises(SpecError) as caught:
        load_plan(_spec(tmp_path, "cores: 1", "defaults:\n  resources: {memory: 2000T}\n"))
    assert caught.value.field == "defaults.resources.memory"


def test_the_largest_values_plan(tmp_path):
    spec = _spec(tmp_path, f"cores: {LIMITS['cores']}, gpus: {LIMITS['gpus']}, "
                           f"ranks: {LIMITS['ranks']}, memory: 1024T, time: 36500d")
    plan = load_plan(spec)
    assert int(plan.ranks.max()) == LIMITS["ranks"] and int(plan.memory.max()) == 2**50


def test_python_api_values_are_bounded_too():
    with pytest.raises(ValueError, match="cores must be at most 1,048,576"):
        hf.task(len, cores=10**7)
    with pytest.raises(ValueError, match="memory must be at most"):
        Resources(memory=2**51)


def test_validate_and_plan_say_it_in_one_line(tmp_path):
    spec = _spec(tmp_path, "cores: 9999999999")
    for command in ("validate", "plan"):
        done = subprocess.run([sys.executable, "-m", "hpcflow", command, str(spec)],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2
        assert done.stderr.splitlines() == [
            f"hpcflow {command}: {spec}:7: task 'heavy': field 'resources.cores': must be at most "
            "1,048,576, got 9999999999"]
