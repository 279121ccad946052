import asyncio

from services.agent_runtime.app import create_service


async def main() -> None:
    # built inside the running loop: grpc.aio binds its server to the loop current at creation
    await create_service().run()


if __name__ == "__main__":
    asyncio.run(main())
