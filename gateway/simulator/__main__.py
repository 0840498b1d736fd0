"""python -m gateway.simulator [--host 127.0.0.1] [--port 8090]"""

import argparse

import uvicorn

from .app import app


def main() -> None:
    parser = argparse.ArgumentParser(description="Gatehouse provider simulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    arguments = parser.parse_args()
    uvicorn.run(app, host=arguments.host, port=arguments.port, log_level="warning", loop="uvloop", http="httptools")


if __name__ == "__main__":
    main()
