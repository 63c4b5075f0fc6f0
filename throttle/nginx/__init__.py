"""The nginx ``auth_request`` configuration shipped for the throttle
(``throttle.conf``)."""

from __future__ import annotations

from importlib import resources


def template() -> str:
    """The shipped config with ``@LISTEN@``, ``@THROTTLE@`` and ``@UPSTREAM@`` placeholders."""
    return resources.files("infermeter.throttle.nginx").joinpath("throttle.conf").read_text("utf-8")


def render(listen: str, throttle: str, upstream: str, token: str = "") -> str:
    """The config, filled in (include it in an ``http {}`` context).

    ``token`` is the throttle's decisions token (``[throttle] api_token``), sent on each check
    subrequest in ``X-Infermeter-Token``; keep the rendered file readable by nginx only.
    An empty token sends no header (nginx drops empty values).
    """
    if any(c in token for c in '"\\$;\r\n'):
        raise ValueError('the token cannot be written into an nginx string (", \\, $, ;)')
    text = template()
    for marker, value in (
        ("@LISTEN@", listen),
        ("@THROTTLE@", throttle),
        ("@UPSTREAM@", upstream),
        ("@TOKEN@", token),
    ):
        text = text.replace(marker, value)
    return text
