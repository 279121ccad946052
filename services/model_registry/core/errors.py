"""The registry's refusals: requests that can never succeed as given (the bus rejects them without
retries, gRPC and HTTP answer them with the reason)."""

from __future__ import annotations

from shared.errors import Refusal


class RegistryRefusal(Refusal):
    """A registry request that cannot succeed as asked."""


class NotFound(RegistryRefusal):
    """Unknown model, version, alias or tag."""


class InvalidInput(RegistryRefusal):
    """A request malformed or impossible in the registry's current state."""


class OutsideArtifactStore(InvalidInput):
    """An artifact that does not lie in the configured artifact store (any other folder of the host
    or bucket would be evaluated and served as if the trainer had written it)."""
