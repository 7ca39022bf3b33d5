"""Middleware that test_middleware.py loads by import path, as --middleware does."""

from __future__ import annotations


class TagHeaderMiddleware:
    """Pure ASGI middleware class: adds `x-tag-class: 1` to every HTTP response."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_tagged(message):
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = list(message.get("headers", [])) + [(b"x-tag-class", b"1")]
            await send(message)

        await self.app(scope, receive, send_tagged)


async def tag_header(request, call_next):
    """An http middleware function: adds `x-tag-func: 1`."""
    response = await call_next(request)
    response.headers["x-tag-func"] = "1"
    return response


NOT_MIDDLEWARE = 42
