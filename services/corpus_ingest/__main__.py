import asyncio

from services.corpus_ingest.app import create_service

if __name__ == "__main__":
    asyncio.run(create_service().run())
