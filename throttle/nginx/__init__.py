"""The nginx ``auth_request`` configuration shipped for the throttle (``throttle.conf``)."""

from __future__ import annotations

from importlib import resources
from string import Template


def template() -> str:
    """The shipped config with ``${listen}``, ``${throttle}``, ``${upstream}`` placeholders."""
    return resources.files("throttle.nginx").joinpath("throttle.conf").read_text("utf-8")


def render(listen: str, throttle: str, upstream: str) -> str:
    """The server block, filled in (include it in an ``http {}`` context)."""
    return Template(template()).substitute(listen=listen, throttle=throttle, upstream=upstream)
