import asyncio

from services.finetuner.app import create_service

if __name__ == "__main__":
    asyncio.run(create_service().run())
