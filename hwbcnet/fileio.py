"""Atomic, versioned files. Everything a user keeps goes through here: written to a temporary file in the same
folder, fsynced, then renamed over the target, so a crash never leaves a half-written file."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
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
    if not isinstance(obj, dict) or obj.get("kind") != kind:
        found = obj.get("kind") if isinstance(obj, dict) else type(obj).__name__
        raise HwbcnetError(f"{path}: expected a {kind} file, found {found!r}")
    if schema_version is not None and obj.get("schema_version") != schema_version:
        raise HwbcnetError(
            f"{path}: {kind} schema version {obj.get('schema_version')!r} is not supported "
            f"(this hwbcnet reads version {schema_version}); re-create the file with this version"
        )
    return obj


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
