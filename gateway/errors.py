"""Errors the gateway answers with, in OpenAI's shape (see gateway/http.py error_response)."""

from .http import Response, error_response


class GatewayError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}

    def response(self) -> Response:
        return error_response(self.status, self.code, self.message, dict(self.headers))


def invalid_request(message: str) -> GatewayError:
    return GatewayError(400, "invalid_request", message)
