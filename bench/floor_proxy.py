"""What Python allows: a bare pass-through proxy, for the overhead benchmark to measure beside
the gateway. Raw ASGI on uvicorn with uvloop and httptools, one pooled aiohttp session, orjson
parsing the request and the answer, nothing else: no auth, limits, routing or usage.

    python bench/floor_proxy.py --port 9100 --upstream http://127.0.0.1:9000
"""

import argparse
from typing import Any

import aiohttp
import orjson
import uvicorn


def create_app(upstream: str) -> Any:
    session: aiohttp.ClientSession | None = None

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        nonlocal session
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            if session is not None:
                await session.close()
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["method"] == "GET":  # readiness
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        document = orjson.loads(body)
        if session is None:
            session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=2000))
        async with session.post(
            f"{upstream}{scope['path']}",
            data=orjson.dumps(document),
            headers={"Authorization": "Bearer floor", "Content-Type": "application/json"},
        ) as response:
            answer = orjson.dumps(orjson.loads(await response.read()))
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(answer))]
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": answer})

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    arguments = parser.parse_args()
    uvicorn.run(
        create_app(arguments.upstream),
        host="127.0.0.1",
        port=arguments.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        lifespan="on",
    )


if __name__ == "__main__":
    main()
