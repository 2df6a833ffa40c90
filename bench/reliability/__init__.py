"""Reliability and security harness (issue 7): load, faults, hostile input, verification.

`python -m bench.reliability --help` lists the runs; `docs/reliability.md` has the figures.
"""

from bench.reliability._harness import Stack, api_stack, make_token
from bench.reliability._logscan import SecretLeak, scan_for_secrets
from bench.reliability._process import ApiProcess, ApiStartError, free_port, random_secret

__all__ = [
    "ApiProcess",
    "ApiStartError",
    "SecretLeak",
    "Stack",
    "api_stack",
    "free_port",
    "make_token",
    "random_secret",
    "scan_for_secrets",
]
