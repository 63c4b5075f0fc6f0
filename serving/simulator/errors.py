"""Errors of the simulator.

Hierarchy::

    infermeter.serving.errors.ServingError
    └── SimulatorError
        └── RequestError          a client request is invalid (carries OpenAI error fields)
            └── ModelNotFound     the request names a model this server does not serve

A bad GPU/model profile raises :class:`infermeter.capacity.errors.ProfileError`.
Only ``server`` turns a :class:`RequestError` into an HTTP status and JSON body.
"""

from __future__ import annotations

from infermeter.serving.errors import ServingError


class SimulatorError(ServingError):
    """Base class of every simulator error."""


class RequestError(SimulatorError):
    """An invalid request, described the way vLLM's OpenAI server describes it."""

    status = 400
    error_type = "BadRequestError"

    def __init__(self, message: str, param: str | None = None, error_type: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if error_type:
            self.error_type = error_type


class ModelNotFound(RequestError):
    """The ``model`` of a request is not served here."""

    status = 404
    error_type = "NotFoundError"

    def __init__(self, model: str, served: str) -> None:
        super().__init__(
            f"The model `{model}` does not exist. Valid aliases: {served}.", param="model"
        )
