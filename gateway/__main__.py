"""python -m gateway [--host 127.0.0.1] [--port 8080] [--workers 1]

With --workers N, this process supervises N worker processes that share the port. Each is its
own gateway node: node id `<GATEWAY_NODE_ID>-<n>` (n from 1), its own state folder and
heartbeat. A worker that dies is started again with the same number.

Each worker listens on a socket of its own with SO_REUSEPORT, so the kernel spreads new
connections evenly over them. With one shared socket, whichever process woke first took most
of a burst of keep-alive connections and kept them (61 of 64 seen with 2 processes, bench
section 12). A worker that dies takes the connections waiting in its own queue with it.
"""

import argparse
import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from multiprocessing.context import ForkProcess
from types import FrameType

import uvicorn

from . import logs
from .server_protocol import GatewayHttpProtocol
from .settings import base_node_id

log = logging.getLogger("gateway.supervisor")
PR_SET_PDEATHSIG = 1  # prctl(2)
SHUTDOWN_SECONDS = 12
RESTART_PAUSE_SECONDS = 1.0  # a worker that dies at once is not restarted in a tight loop


def server_config(host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(
        "gateway.app:create_app",
        factory=True,
        host=host,
        port=port,
        log_level="warning",
        log_config=None,  # uvicorn's loggers go to ours (gateway/logs.py), in the same format
        access_log=False,
        loop="uvloop",
        http=GatewayHttpProtocol,  # uvicorn's httptools protocol, with a deadline for headers
        timeout_keep_alive=int(os.environ.get("GATEWAY_IDLE_TIMEOUT_SECONDS", "5")),
        # A stop waits this long for requests in flight, then ends: a test saw a worker wait for
        # ever after SIGTERM, left behind on the port. Below the supervisor's 15 s wait.
        timeout_graceful_shutdown=SHUTDOWN_SECONDS,
        lifespan="on",
        proxy_headers=False,
        server_header=False,
    )


def reuse_port_socket(host: str, port: int, *, listen: bool = True) -> socket.socket:
    """A socket on host:port that other sockets of this user with SO_REUSEPORT may share."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    if listen:
        sock.listen(2048)  # uvicorn's default backlog
    return sock


def die_with(supervisor: int) -> None:
    """SIGTERM to this process when its supervisor dies, even by SIGKILL (Linux): an orphaned
    worker would go on accepting on the shared port beside the next supervisor's workers."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != supervisor:  # it died before the line above
        os._exit(0)


def end_after_orphaned(supervisor: int, grace: float) -> None:
    """The backstop of die_with: once the supervisor is gone, end this process `grace` seconds
    later whatever its graceful stop is doing. A worker was seen still running 30 minutes after
    its supervisor's SIGKILL: it had caught the SIGTERM, but its stop never finished."""

    def watch() -> None:
        while os.getppid() == supervisor:
            time.sleep(0.5)
        time.sleep(grace)
        os._exit(1)

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()


def serve_worker(host: str, port: int, index: int, supervisor: int) -> None:
    """One worker process: its own node id, serving on its own socket of the shared port."""
    die_with(supervisor)
    end_after_orphaned(supervisor, SHUTDOWN_SECONDS + 3)
    os.environ["GATEWAY_WORKER_INDEX"] = str(index)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when workers stop
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the supervisor's handler, until uvicorn's
    uvicorn.Server(server_config(host, port)).run(sockets=[reuse_port_socket(host, port)])


def supervise(host: str, port: int, workers: int) -> None:
    # One base id for every process and every restart: a restarted worker is the same node,
    # with the same state folder to start from while Redis is down.
    os.environ["GATEWAY_NODE_ID"] = base_node_id()
    # Fails now, not in every worker, when another program holds the port. Bound, not listening:
    # no connection is ever queued on it.
    probe = reuse_port_socket(host, port, listen=False)
    context = multiprocessing.get_context("fork")  # no threads or event loop exist yet
    stopping = False

    def start(index: int) -> ForkProcess:
        process = context.Process(target=serve_worker, args=(host, port, index, os.getpid()), name=f"gateway-{index}")
        process.start()
        return process

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    processes = {index: start(index) for index in range(1, workers + 1)}
    while not stopping:
        time.sleep(0.2)
        for index, process in list(processes.items()):
            if not process.is_alive() and not stopping:
                log.warning("worker %d exited with %s; starting it again", index, process.exitcode)
                time.sleep(RESTART_PAUSE_SECONDS)
                processes[index] = start(index)
    for process in processes.values():
        if process.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)
    for process in processes.values():
        process.join(timeout=15)
        if process.is_alive():
            process.kill()
    probe.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="Gatehouse gateway worker")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--workers", type=int, default=1, help="processes; each is its own node")
    arguments = parser.parse_args()
    logs.configure("gateway", logging.INFO)
    logging.getLogger("aiohttp").setLevel(logging.WARNING)
    if arguments.workers <= 1:
        uvicorn.Server(server_config(arguments.host, arguments.port)).run()
    else:
        supervise(arguments.host, arguments.port, arguments.workers)


if __name__ == "__main__":
    main()
