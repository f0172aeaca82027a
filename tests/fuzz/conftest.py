"""
Hypothesis profiles for the fuzz tests: ``ci`` (the default, a few seconds in
all, part of every test run) and ``fuzz`` (``make fuzz``: many more examples;
FUZZ_EXAMPLES overrides the count).  The profile is chosen by KVD_FUZZ.
"""

import os

from hypothesis import HealthCheck, settings

_COMMON = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("ci", max_examples=60, derandomize=True, **_COMMON)
settings.register_profile("fuzz", max_examples=int(os.environ.get("FUZZ_EXAMPLES", "20000")), **_COMMON)
settings.load_profile(os.environ.get("KVD_FUZZ", "ci"))
