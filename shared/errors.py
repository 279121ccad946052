"""The one refusal type cores raise: a request that can never succeed as asked.

Cores subclass it for their own refusals (an invalid spec, a missing input, an unsupported option).
It lives outside the bus so that cores can raise it without importing any transport; the adapters
answer it the same way everywhere: the bus dead-letters the job without retries (``JobRejected``),
gRPC answers INVALID_ARGUMENT and HTTP 400, each with the reason.
"""

from __future__ import annotations


class Refusal(Exception):
    """The request cannot succeed as asked; the message names the problem."""
