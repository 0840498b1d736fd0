"""A tiny provider on 127.0.0.1 that records every request it gets (path and headers) and, when
told to fail, echoes the key it was sent back in its error body in many spellings, the way a
careless provider or a hostile host would. It stands in for "a host of the editor's choosing"."""

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, quote_plus

import pytest

SECRET_HEADERS = ("authorization", "x-api-key", "api-key")
# Words of the canaries below that no page, audit row or message of ours contains by chance.
CANARY_WORDS = ("quokka", "zephyr", "wombat", "jynx", "narwhal", "ibex")


def spellings(secret: str) -> dict[str, str]:
    """The secret as a provider might echo it: anything here found in our output is a leak."""
    return {
        "raw": secret,
        "url-encoded": quote(secret, safe=""),
        "form-encoded": quote_plus(secret),
        "base64": base64.b64encode(secret.encode()).decode(),
        "urlsafe-base64": base64.urlsafe_b64encode(secret.encode()).decode().rstrip("="),
        "upper-case": secret.upper(),
        "swapped-case": secret.swapcase(),
        "reversed": secret[::-1],
        "masked": f"{secret[:10]}{'*' * 10}{secret[-6:]}",
    }


def leaks(text: str, secret: str) -> list[str]:
    """Which spellings of `secret`, or which of its distinctive words, `text` contains."""
    found = [name for name, spelled in spellings(secret).items() if spelled in text]
    lowered = text.lower()
    for word in CANARY_WORDS:
        if word in secret.lower() and (word in lowered or word[::-1] in lowered):
            found.append(f"word {word!r}")
    # Base64 of a longer text keeps our secret's run only at a 3-byte boundary: check each.
    for shift in range(3):
        chunk = base64.b64encode(secret[shift:].encode()).decode()[4:24]
        if chunk in text:
            found.append(f"base64 run at {shift}")
    return found


def secret_in(headers: dict[str, str]) -> str:
    for name in SECRET_HEADERS:
        if name in headers:
            return headers[name].removeprefix("Bearer ")
    return ""


class RecordingProvider:
    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.status = 200
        self.delay = 0.0
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                headers = {name.lower(): value for name, value in self.headers.items()}
                provider.requests.append({"path": self.path, "headers": headers})
                if provider.delay:
                    time.sleep(provider.delay)
                if provider.status == 200:
                    body = json.dumps({"object": "list", "data": [{"id": "gpt-4o", "object": "model"}]})
                    self.send_response(200)
                else:
                    echoed = " ".join(spellings(secret_in(headers)).values())
                    body = json.dumps(
                        {
                            "error": {
                                "message": f"Incorrect API key provided: {echoed}",
                                "type": "invalid_request_error",
                                "code": echoed,
                            }
                        }
                    )
                    self.send_response(provider.status)
                    self.send_header("WWW-Authenticate", f'Bearer error="invalid_token", key="{echoed}"')
                encoded = body.encode()
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(encoded)))
                try:
                    self.end_headers()
                    self.wfile.write(encoded)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test) or closed without reading the body

            def log_message(self, format, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def secrets_received(self) -> list[str]:
        return [secret_in(request["headers"]) for request in self.requests]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def recording_provider():
    """recording_provider() -> a new RecordingProvider; every one is stopped after the test."""
    started: list[RecordingProvider] = []

    def start() -> RecordingProvider:
        provider = RecordingProvider()
        started.append(provider)
        return provider

    yield start
    for provider in started:
        provider.stop()
