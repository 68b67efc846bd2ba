"""aio-pika JsonRPC client for the interop tests.

Usage: aio_pika_client.py URL METHOD KWARGS_JSON [TIMEOUT_SECONDS]

Calls METHOD once with the kwargs and prints one JSON line:
  {"result": <value>}                                 on success,
  {"error": {"class": ..., "args": [...]}}            when the call raised.
"""
import asyncio
import json
import sys

import aio_pika
from aio_pika.patterns import JsonRPC


async def main() -> None:
    url, method, kwargs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    timeout = float(sys.argv[4]) if len(sys.argv) > 4 else 10.0
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        rpc = await JsonRPC.create(channel)
        try:
            result = await asyncio.wait_for(
                rpc.call(method, kwargs=kwargs, expiration=int(timeout)), timeout
            )
            print(json.dumps({"result": result}), flush=True)
        except Exception as e:  # noqa: BLE001 - the test inspects whatever was raised
            args = [a if isinstance(a, (dict, list, str, int, float, bool)) or a is None else repr(a) for a in e.args]
            print(json.dumps({"error": {"class": type(e).__name__, "args": args}}), flush=True)


asyncio.run(main())
