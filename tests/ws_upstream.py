"""A WebSocket upstream (aiohttp) for tests/test_e2e_websocket.py, run as a subprocess:

    python tests/ws_upstream.py PORT

- /ws/echo: every text or binary message is sent back as it came (aiohttp reassembles
  fragmented messages and answers pings itself). The text `close:CODE:REASON` makes the server
  close with that code and reason instead.
- /ws/broadcast: every message is sent to every client connected there.
- anything else: plain HTTP 200 `plain:PATH`, so one port serves both.

Prints "ready" once listening.
"""

from __future__ import annotations

import asyncio
import sys

from aiohttp import WSMsgType, web

broadcast_clients: set[web.WebSocketResponse] = set()


async def echo(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(max_msg_size=0)  # 0: no limit (large-frame tests)
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == WSMsgType.TEXT and msg.data.startswith("close:"):
            _, code, reason = msg.data.split(":", 2)
            await ws.close(code=int(code), message=reason.encode())
        elif msg.type == WSMsgType.TEXT:
            await ws.send_str(msg.data)
        elif msg.type == WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    return ws


async def broadcast(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    broadcast_clients.add(ws)
    try:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                for client in list(broadcast_clients):
                    await client.send_str(msg.data)
    finally:
        broadcast_clients.discard(ws)
    return ws


async def plain(request: web.Request) -> web.Response:
    return web.Response(text=f"plain:{request.path}", headers={"x-upstream": "ws-1"})


async def main() -> None:
    app = web.Application()
    app.add_routes([web.get("/ws/echo", echo), web.get("/ws/broadcast", broadcast), web.route("*", "/{tail:.*}", plain)])
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", int(sys.argv[1])).start()
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
