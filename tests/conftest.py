"""Shared test settings: Hypothesis profiles, and the ``gpu`` fixture.

``ci`` (the default) keeps the whole suite to a few minutes on 2 cores;
``thorough`` runs many more examples: ``HYPOTHESIS_PROFILE=thorough pytest``.
"""
import os

import pytest
from hypothesis import HealthCheck, settings

import fake_cupy
from tinylatent import backend

HAVE_GPU = backend.gpu_available()


@pytest.fixture(params=["fake-cupy", "cupy"])
def gpu(request):
    """The device backend a case runs on: the fake CuPy of ``fake_cupy.py`` always, real CuPy where
    there is a GPU (elsewhere that case skips). The value says which: ``"fake-cupy"`` or ``"cupy"``."""
    if request.param == "cupy":
        if not HAVE_GPU:
            pytest.skip("no CuPy with a CUDA device on this machine")
        yield request.param
    else:
        with fake_cupy.installed():
            yield request.param

settings.register_profile(
    "ci", max_examples=25, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "thorough", max_examples=500, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
