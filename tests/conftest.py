"""Shared test settings: Hypothesis profiles.

``ci`` (the default) keeps the whole suite to a few minutes on 2 cores;
``thorough`` runs many more examples: ``HYPOTHESIS_PROFILE=thorough pytest``.
"""
import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=25, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "thorough", max_examples=500, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
