"""aio-pika JsonRPC server for the interop tests.

Usage: aio_pika_server.py URL PREFIX

Registers PREFIX.add(x, y) -> x + y and PREFIX.fail() -> raises ValueError("boom"), prints
"ready", and serves until its standard input closes.
"""
import asyncio
import sys

import aio_pika
from aio_pika.patterns import JsonRPC


async def add(*, x, y):
    return x + y


async def fail():
    raise ValueError("boom")


async def main() -> None:
    url, prefix = sys.argv[1], sys.argv[2]
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        rpc = await JsonRPC.create(channel)
        await rpc.register(f"{prefix}.add", add)
        await rpc.register(f"{prefix}.fail", fail)
        print("ready", flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)


asyncio.run(main())
