"""``ServingError``: an error with the HTTP status and gRPC code TF Serving gives it.

Shared by the server (which raises it) and the client (which raises it for the server's
answer); neither imports it from the other.
"""

# gRPC status code name -> the HTTP status TF Serving's REST API gives the same error.
HTTP_STATUS = {"INVALID_ARGUMENT": 400, "FAILED_PRECONDITION": 400, "NOT_FOUND": 404,
               "RESOURCE_EXHAUSTED": 413, "UNAVAILABLE": 503, "UNIMPLEMENTED": 501}
# HTTP status -> gRPC status code name, as TF Serving maps them (the server's direction).
GRPC_CODES = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 408: "DEADLINE_EXCEEDED",
              413: "RESOURCE_EXHAUSTED", 501: "UNIMPLEMENTED", 503: "UNAVAILABLE"}


class ServingError(RuntimeError):
    """An error with the HTTP ``status`` TF Serving answers it with, on both sides of the
    wire: the server raises it (``ServingError(400, message)``) and the client raises it for
    the server's answer, with ``message`` its ``{"error": ...}`` text (REST) or the status
    details (gRPC) and ``url`` where it came from. ``code`` is the gRPC status code name
    (the one received, or the one TF Serving maps ``status`` to)."""

    def __init__(self, status, message, url=None, code=None):
        if url is None:
            super().__init__(message)
        else:
            super().__init__(f"{url}: {f'gRPC {code}' if code else f'HTTP {status}'}: {message}")
        self.status, self.message, self.url = status, message, url
        self.code = code or GRPC_CODES.get(status, "INTERNAL" if status >= 500
                                           else "INVALID_ARGUMENT")

    @property
    def http_status(self):
        return self.status
