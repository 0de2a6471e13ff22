"""The README's one error shape, checked the same way by every test."""

from __future__ import annotations


def error_of(response) -> dict:
    """`{"error": {"type", "message", "param"?}}` and nothing else; returns the inner object."""
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert {"type", "message"} <= set(error) <= {"type", "message", "param"}, error
    assert isinstance(error["type"], str) and error["type"]
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error.get("param", ""), str)
    return error
