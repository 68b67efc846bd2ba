"""aio-pika's RPC pattern under the same workload as `rpc-bench amqp`: a registered
`multiply`, called in a closed loop by N concurrent tasks, server and client on separate
connections in one process. Prints one JSON object per run on stdout.

Usage: python aio_pika_bench.py --concurrency 1 64 --seconds 3 --reps 5
"""
import argparse
import asyncio
import json
import os
import time
import uuid

import aio_pika
from aio_pika.patterns import RPC


async def multiply(*, a, b):
    return a * b


def percentile(sorted_values, p):
    if not sorted_values:
        return float("nan")
    rank = round((p / 100.0) * (len(sorted_values) - 1))
    return sorted_values[rank]


async def closed_loop(rpc, method, concurrency, warmup, seconds):
    start = time.perf_counter()
    measure_from = start + warmup
    end = measure_from + seconds
    latencies, errors = [], 0

    async def worker(w):
        nonlocal errors
        i = 0
        while True:
            t0 = time.perf_counter()
            if t0 >= end:
                return
            a = w * 1_000_000 + i
            i += 1
            try:
                ok = await rpc.call(method, kwargs={"a": a, "b": 3}) == a * 3
            except Exception:
                ok = False
            if t0 < measure_from:
                continue
            if ok:
                latencies.append(time.perf_counter() - t0)
            else:
                errors += 1

    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    elapsed = max(time.perf_counter() - measure_from, seconds)
    latencies.sort()
    return {
        "concurrency": concurrency,
        "rate": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "errors": errors,
    }


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default=os.getenv("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"))
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()

    server_conn = await aio_pika.connect(args.url)
    client_conn = await aio_pika.connect(args.url)
    async with server_conn, client_conn:
        server_channel = await server_conn.channel()
        await server_channel.set_qos(prefetch_count=128)
        server = await RPC.create(server_channel)
        method = f"bench.peer.multiply.{uuid.uuid4().hex}"
        await server.register(method, multiply, auto_delete=True)
        client = await RPC.create(await client_conn.channel())
        for concurrency in args.concurrency:
            for _ in range(args.reps):
                result = await closed_loop(client, method, concurrency, args.warmup, args.seconds)
                print(json.dumps(result), flush=True)
        await client.close()
        await server.close()


if __name__ == "__main__":
    asyncio.run(main())
