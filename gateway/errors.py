"""Errors in OpenAI's shape: {"error": {"message", "type", "code"}}."""

from starlette.responses import JSONResponse

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    502: "api_error",
    503: "api_error",
    504: "timeout_error",
}


class GatewayError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}

    def response(self) -> JSONResponse:
        body = {
            "error": {"message": self.message, "type": ERROR_TYPES.get(self.status, "api_error"), "code": self.code}
        }
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def invalid_request(message: str) -> GatewayError:
    return GatewayError(400, "invalid_request", message)
