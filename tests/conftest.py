"""Test configuration: hypothesis profiles and the backend fixtures every math test runs under.

HYPOTHESIS_PROFILE picks the profile: ``ci`` (default; derandomized, no example database, no
deadline: what .ci/run uses), ``dev`` (fewer examples, for quick edits) or ``explore`` (many random
examples, run by hand before trusting a new property).
"""

import os

import pytest
from hypothesis import HealthCheck, settings

from refdiff.backend import available_backends, get_backend

_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", derandomize=True, database=None, max_examples=40, print_blob=True, **_COMMON)
settings.register_profile("dev", max_examples=10, **_COMMON)
settings.register_profile("explore", max_examples=1000, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# cupy carries the gpu mark, so `pytest -m gpu` selects exactly the checks that run on the GPU.
BACKEND_PARAMS = [
    pytest.param("numpy"),
    pytest.param("array_api_strict"),
    pytest.param("cupy", marks=pytest.mark.gpu),
]


@pytest.fixture(scope="session", params=BACKEND_PARAMS)
def backend(request):
    """A refdiff Backend: numpy, array_api_strict on a fake non-CPU device, cupy where a GPU is."""
    if request.param not in available_backends():
        pytest.skip(f"backend {request.param} is not available here")
    return get_backend(request.param)


@pytest.fixture(scope="session")
def xp(backend):
    """The Array API namespace of ``backend``."""
    return backend.xp
