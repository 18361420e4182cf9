"""Atomic, versioned files. Everything a user keeps goes through here: written to a temporary file in the same
folder, fsynced, then renamed over the target, so a crash never leaves a half-written file."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

from hwbcnet.errors import HwbcnetError


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates owner-only files; give the usual umask permissions so e.g. a container's user can read it
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=False) + "\n").encode())


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> Path:
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def is_version(found: Any, expected: int) -> bool:
    """`found` is the integer `expected` (JSON `true` equals 1 in Python, but is no schema version)."""
    return type(found) is int and found == expected


def torch_load(path: str | os.PathLike) -> Any:
    """torch.load of a file hwbcnet wrote (weights only, onto the CPU). torch's warnings about a foreign pickle are
    silenced: the caller refuses such a file with its own one-line error."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(path, map_location="cpu", weights_only=True)


def read_json(path: str | os.PathLike, *, kind: str, schema_version: int | None = None) -> dict:
    """Read a JSON file written by hwbcnet. `kind` is the file's declared type (e.g. "hwbcnet.lut");
    a file of another kind, a newer schema or unparsable content is refused with a message naming the file."""
    path = Path(path)
    if not path.exists():
        raise HwbcnetError(f"{path}: file not found")
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HwbcnetError(f"{path}: not valid JSON ({exc.__class__.__name__}: {exc}); the file is corrupt, re-create it") from None
    except OSError as exc:
        raise HwbcnetError(f"{path}: cannot be read ({exc.strerror})") from None
    if not isinstance(obj, dict) or obj.get("kind") != kind:
        found = obj.get("kind") if isinstance(obj, dict) else type(obj).__name__
        raise HwbcnetError(f"{path}: expected a {kind} file, found {found!r}")
    if schema_version is not None and not is_version(obj.get("schema_version"), schema_version):
        raise HwbcnetError(
            f"{path}: {kind} schema version {obj.get('schema_version')!r} is not supported "
            f"(this hwbcnet reads version {schema_version}); re-create the file with this version"
        )
    return obj


NUMBER = "number"  # a `check_fields` type: int or float, finite, not bool
_TYPE_NAMES = {dict: "an object", list: "a list", str: "a string", int: "an integer", bool: "true/false",
               NUMBER: "a finite number", type(None): "null"}


def has_type(value: Any, kind) -> bool:
    """`value` is of `kind` (a `check_fields` type)."""
    if isinstance(kind, tuple):
        return any(has_type(value, k) for k in kind)
    if kind is NUMBER:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def check_fields(obj: Any, fields: dict, source: str | os.PathLike, where: str = "",
                 optional: dict | None = None) -> dict:
    """`obj` when it is a dict holding every key of `fields`, and possibly keys of `optional`, each with a value of
    its type (dict, list, str, int, bool, NUMBER, type(None) or a tuple of them). A file whose content is not what
    hwbcnet wrote is refused with a message naming the file and the field, instead of failing later wherever the
    field is used."""
    if not isinstance(obj, dict):
        what = where.rstrip(".") or "its content"
        raise HwbcnetError(f"{source}: corrupt file, {what} is not an object; re-create it")
    for key, kind in {**(optional or {}), **fields}.items():
        if key not in obj:
            if key in fields:
                raise HwbcnetError(f"{source}: corrupt file, {where}{key} is missing; re-create it")
        elif not has_type(obj[key], kind):
            expected = " or ".join(_TYPE_NAMES[k] for k in (kind if isinstance(kind, tuple) else (kind,)))
            raise HwbcnetError(f"{source}: corrupt file, {where}{key} is not {expected}; re-create it")
    return obj


@contextlib.contextmanager
def refuse_corrupt(source: str | os.PathLike, what: str):
    """Around loading a file's recorded state into live objects (state_dicts, RNG states): an error there means the
    file does not hold what hwbcnet wrote, and becomes one line naming the file."""
    try:
        yield
    except (RuntimeError, KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        detail = (str(exc).splitlines() or [""])[0][:160]
        raise HwbcnetError(f"{source}: corrupt {what} ({type(exc).__name__}: {detail}); re-create it") from None


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
