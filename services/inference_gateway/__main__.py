"""``python -m services.inference_gateway [worker]``: run the gateway, or a worker process behind it."""

import asyncio
import sys

from services.inference_gateway.app import create_service
from services.inference_gateway.config import GatewaySettings

if __name__ == "__main__":
    args = sys.argv[1:]
    if args not in ([], ["gateway"], ["worker"]):
        raise SystemExit("usage: python -m services.inference_gateway [gateway|worker]")
    if args == ["worker"]:
        settings = GatewaySettings(gateway_role="worker")
    elif args == ["gateway"]:
        settings = GatewaySettings(gateway_role="gateway")
    else:  # PUYU_GATEWAY_ROLE decides
        settings = GatewaySettings()
    asyncio.run(create_service(settings).run())
