#!/usr/bin/env python3
"""Opens N PostgreSQL client connections to HOST:PORT, logs each in (trust or cleartext/md5 are
not needed: the benchmark configures trust), waits for ReadyForQuery, then holds them all idle
until stdin closes or SIGTERM. Prints "ready N" on stdout once every connection is logged in.

    idle-clients.py PORT N USER DB [PARALLEL]
"""
import asyncio, struct, sys, signal

async def login(port, user, db, sem):
    async with sem:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        body = struct.pack("!i", 196608) + b"user\0" + user.encode() + b"\0database\0" + db.encode() + b"\0\0"
        w.write(struct.pack("!i", len(body) + 4) + body)
        await w.drain()
        while True:
            head = await r.readexactly(5)
            tag, n = head[0:1], struct.unpack("!i", head[1:])[0]
            payload = await r.readexactly(n - 4)
            if tag == b"E":
                raise SystemExit(f"login refused: {payload!r}")
            if tag == b"R" and struct.unpack("!i", payload[:4])[0] != 0:
                raise SystemExit("the benchmark expects trust authentication")
            if tag == b"Z":
                return r, w

async def main():
    port, n, user, db = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    par = int(sys.argv[5]) if len(sys.argv) > 5 else 200
    sem = asyncio.Semaphore(par)
    conns = await asyncio.gather(*(login(port, user, db, sem) for _ in range(n)))
    print(f"ready {len(conns)}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_reader(sys.stdin.fileno(), lambda: stop.set() if not sys.stdin.readline() else None)
    await stop.wait()
    for _, w in conns:
        w.close()

asyncio.run(main())
