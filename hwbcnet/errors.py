"""User-facing errors: the CLI prints their message on one line and exits with code 2."""


class HwbcnetError(Exception):
    """Bad input or a missing prerequisite. The message must say what to do."""

    exit_code = 2


class MissingRuntimeError(HwbcnetError):
    """An optional runtime (TensorRT, CUDA) is not installed or has no device."""
