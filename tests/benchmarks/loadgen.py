"""A small closed-loop HTTP/1.1 load generator: N keep-alive connections, each sending its next request
as soon as the previous response is read, for a fixed duration. Runs in its own process (asyncio on
one core), so it shares no GIL with the benchmark or the server.

    python -m tests.benchmarks.loadgen --port 8000 --connections 32 --duration 10 --url /api/v1/data
    python -m tests.benchmarks.loadgen ... --urls-file urls.txt     # rotate through many URLs
    python -m tests.benchmarks.loadgen ... --conditional            # If-None-Match with the ETag seen
    python -m tests.benchmarks.loadgen --serve-trivial 9999          # a server that does nothing (its ceiling)

Prints one JSON object: requests, requests_per_s, latency percentiles (ms), statuses, errors.
Latency is measured per request from writing it to reading the last byte of the response.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time

READ_LIMIT = 1 << 22


class Stats:
    def __init__(self):
        self.latencies: list[float] = []
        self.statuses: dict[int, int] = {}
        self.errors = 0
        self.error_kinds: dict[str, int] = {}
        self.bytes = 0
        self.not_modified = 0

    def error(self, kind: str) -> None:
        self.errors += 1
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1


def percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict, int, bool]:
    """(status, selected headers, body bytes, server keeps the connection open)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    keep_alive = headers.get("connection", "").lower() != "close"
    size = 0
    if "content-length" in headers:
        n = int(headers["content-length"])
        if n:
            await reader.readexactly(n)
        size = n
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            line = await reader.readuntil(b"\r\n")
            n = int(line.split(b";", 1)[0], 16)
            await reader.readexactly(n + 2)
            size += n
            if n == 0:
                break
    elif status not in (204, 304) and not (100 <= status < 200):
        body = await reader.read()           # until close
        size = len(body)
        keep_alive = False
    return status, headers, size, keep_alive


async def connection(host, port, urls, start_index, deadline, stats, conditional, etags, timeout, extra_headers):
    index = start_index
    reader = writer = None
    while time.perf_counter() < deadline:
        if writer is None:
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, limit=READ_LIMIT), timeout)
            except (OSError, asyncio.TimeoutError) as exc:
                stats.error(f"connect: {exc.__class__.__name__}")
                await asyncio.sleep(0.05)
                continue
        url = urls[index % len(urls)]
        index += 1
        head = f"GET {url} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: application/json\r\n{extra_headers}"
        if conditional and url in etags:
            head += f"If-None-Match: {etags[url]}\r\n"
        request = (head + "\r\n").encode("latin-1")
        started = time.perf_counter()
        try:
            writer.write(request)
            status, headers, size, keep_alive = await asyncio.wait_for(read_response(reader), timeout)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ValueError, IndexError) as exc:
            stats.error(exc.__class__.__name__)
            writer.close()
            reader = writer = None
            continue
        elapsed = time.perf_counter() - started
        if started < deadline:              # count what was sent within the window
            stats.latencies.append(elapsed)
            stats.statuses[status] = stats.statuses.get(status, 0) + 1
            stats.bytes += size
            if status == 304:
                stats.not_modified += 1
        if conditional and "etag" in headers:
            etags[url] = headers["etag"]
        if not keep_alive:
            writer.close()
            reader = writer = None
    if writer is not None:
        writer.close()


async def run_load(host, port, urls, connections, duration, conditional=False, warmup=1.0, timeout=30.0,
                   headers=None, shuffle_seed=None, warmup_urls=None) -> dict:
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    etags: dict[str, str] = {}
    if shuffle_seed is not None:
        urls = list(urls)
        random.Random(shuffle_seed).shuffle(urls)
    step = max(1, len(urls) // connections)
    if warmup > 0:   # open connections, warm caches and ETags; not counted
        warm = Stats()
        end = time.perf_counter() + warmup
        wurls = warmup_urls or urls
        wstep = max(1, len(wurls) // connections)
        await asyncio.gather(*(connection(host, port, wurls, i * wstep, end, warm, conditional, etags, timeout, extra)
                               for i in range(connections)))
    stats = Stats()
    started = time.perf_counter()
    deadline = started + duration
    await asyncio.gather(*(connection(host, port, urls, i * step + 7919, deadline, stats, conditional, etags,
                                      timeout, extra) for i in range(connections)))
    elapsed = time.perf_counter() - started
    lat = sorted(stats.latencies)
    ok = sum(n for s, n in stats.statuses.items() if 200 <= s < 400)
    ms = lambda v: None if v is None else round(v * 1000, 2)  # noqa: E731
    return {
        "connections": connections, "duration_s": round(elapsed, 2), "distinct_urls": len(set(urls)),
        "requests": len(lat), "requests_per_s": round(len(lat) / duration, 1),
        "ok_per_s": round(ok / duration, 1),
        "p50_ms": ms(percentile(lat, 50)), "p90_ms": ms(percentile(lat, 90)), "p99_ms": ms(percentile(lat, 99)),
        "max_ms": ms(lat[-1] if lat else None), "mean_ms": ms(sum(lat) / len(lat) if lat else None),
        "statuses": {str(k): v for k, v in sorted(stats.statuses.items())},
        "errors": stats.errors + sum(n for s, n in stats.statuses.items() if s >= 400),
        "transport_errors": stats.errors, "error_kinds": stats.error_kinds,
        "not_modified": stats.not_modified, "mean_body_bytes": round(stats.bytes / len(lat)) if lat else 0,
    }


# -- self test: the generator's own ceiling against a server that does nothing --------------------------

async def _trivial_server(reader, writer):
    body = b'{"status":"alive"}'
    response = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                + str(len(body)).encode() + b"\r\n\r\n" + body)
    try:
        while True:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(response)
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


def serve_trivial(port: int) -> None:
    async def main():
        server = await asyncio.start_server(_trivial_server, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--url", action="append", default=[])
    p.add_argument("--urls-file")
    p.add_argument("--warmup-urls-file", help="URLs for the warm-up (default: the measured ones)")
    p.add_argument("--shuffle-seed", type=int)
    p.add_argument("--conditional", action="store_true", help="send If-None-Match with the last ETag per URL")
    p.add_argument("--header", action="append", default=[], help="extra header 'Name: value'")
    p.add_argument("--serve-trivial", type=int, metavar="PORT", help="run the trivial server (for --self-test)")
    args = p.parse_args(argv)
    if args.serve_trivial:
        serve_trivial(args.serve_trivial)
        return 0
    urls = list(args.url)
    if args.urls_file:
        with open(args.urls_file, encoding="utf-8") as fh:
            urls += [line.strip() for line in fh if line.strip()]
    if not urls or not args.port:
        p.error("--port and at least one --url (or --urls-file) are needed")
    warmup_urls = None
    if args.warmup_urls_file:
        with open(args.warmup_urls_file, encoding="utf-8") as fh:
            warmup_urls = [line.strip() for line in fh if line.strip()]
    headers = dict(h.split(":", 1) for h in args.header)
    result = asyncio.run(run_load(args.host, args.port, urls, args.connections, args.duration,
                                  conditional=args.conditional, warmup=args.warmup, timeout=args.timeout,
                                  headers={k.strip(): v.strip() for k, v in headers.items()},
                                  shuffle_seed=args.shuffle_seed, warmup_urls=warmup_urls))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
