"""refdiff.speed: the one switch between the reference path and the speed layer."""

import pytest

from refdiff import speed


def test_reference_path_switches_and_restores():
    """Inside reference_path() enabled() is False, inside reference_path(False) True; each restores the
    state it found, also when the block raises."""
    before = speed.enabled()
    with speed.reference_path():
        assert not speed.enabled()
        with speed.reference_path(False):
            assert speed.enabled()
        assert not speed.enabled()
    assert speed.enabled() == before
    with pytest.raises(KeyError):
        with speed.reference_path():
            raise KeyError("inside")
    assert speed.enabled() == before


def test_reference_path_refuses_a_non_bool():
    """reference_path(on) takes a bool and names the argument otherwise."""
    with pytest.raises(ValueError, match="on must be a bool"):
        with speed.reference_path("yes"):
            pass
