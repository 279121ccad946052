import asyncio

from services.trainer.app import create_service

if __name__ == "__main__":
    asyncio.run(create_service().run())
