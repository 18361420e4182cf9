"""Timing backends, looked up by the `backend` name of a device profile."""

from hwbcnet.hardware.backends.base import Backend, get_backend, register_backend

__all__ = ["Backend", "get_backend", "register_backend"]
