"""Served while no release of this app is deployed yet: a plain 503 to every request."""

BODY = b"No release deployed yet.\n"


def application(environ, start_response):
    headers = [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(BODY))),
        ("Retry-After", "60"),
    ]
    start_response("503 Service Unavailable", headers)
    return [BODY]
