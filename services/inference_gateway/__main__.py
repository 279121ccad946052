"""``python -m services.inference_gateway``: run the gateway service."""

import asyncio

from services.inference_gateway.app import create_service

if __name__ == "__main__":
    asyncio.run(create_service().run())
