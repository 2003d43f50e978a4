"""scripts/floor_check.py: which releases it installs for the declared floors (the install and the
smoke run are CI's step, .ci/run)."""

import pytest
from packaging.version import Version

from tests.helpers import load_script

floor_check = load_script("floor_check")


def test_every_checked_dependency_has_its_floor_read_from_pyproject():
    floors = floor_check.declared_floors()
    assert set(floors) == set(floor_check.LIGHT) | set(floor_check.PURE)
    assert floors["numpy"] == Version("1.24") and floors["opencv-python-headless"] == Version("4.8")


def test_the_lowest_final_release_at_or_above_the_floor_is_chosen():
    available = ["5.1.0.95", "4.9.0.80", "4.8.1.78", "4.8.0.76", "4.7.0.72", "4.8.0rc1"]
    assert floor_check.lowest_release(Version("4.8"), available) == "4.8.0.76"
    assert floor_check.lowest_release(Version("6"), available) is None


def test_a_dependency_without_a_lower_bound_is_refused(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[project]\ndependencies = ["numpy", "click>=8.1"]\n')
    with pytest.raises(floor_check.FloorError, match="numpy declares no lower bound"):
        floor_check.declared_floors(tmp_path / "pyproject.toml")
