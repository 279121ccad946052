"""``python -m services.evaluator``: run the evaluator service."""

import asyncio

from services.evaluator.app import create_service

if __name__ == "__main__":
    asyncio.run(create_service().run())
