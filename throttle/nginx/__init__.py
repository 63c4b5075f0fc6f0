"""The nginx ``auth_request`` configuration shipped for the throttle
(``throttle.conf``)."""

from __future__ import annotations

from importlib import resources


def template() -> str:
    """The shipped config with ``@LISTEN@``, ``@THROTTLE@`` and ``@UPSTREAM@`` placeholders."""
    return resources.files("infermeter.throttle.nginx").joinpath("throttle.conf").read_text("utf-8")


def render(listen: str, throttle: str, upstream: str) -> str:
    """The config, filled in (include it in an ``http {}`` context)."""
    text = template()
    for marker, value in (("@LISTEN@", listen), ("@THROTTLE@", throttle), ("@UPSTREAM@", upstream)):
        text = text.replace(marker, value)
    return text
