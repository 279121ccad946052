"""One sandbox mechanism for the code the platform runs on behalf of users and models (the agents'
python tool, the evaluator's generated programs): kernel isolation through bubblewrap
(``isolation.py``), an interpreter-only filesystem view (``view.py``) and a seccomp filter
(``seccomp.py``)."""

from shared.sandbox.isolation import (
    ALLOW_UNISOLATED_ENV,
    Isolation,
    IsolationUnavailable,
    allow_unisolated_from_env,
    resolve_user,
)

__all__ = [
    "ALLOW_UNISOLATED_ENV",
    "Isolation",
    "IsolationUnavailable",
    "allow_unisolated_from_env",
    "resolve_user",
]
