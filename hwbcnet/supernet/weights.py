"""Pretrained weights for a supernet (`--weights FILE`): a state_dict of the user's model.

Accepted: a `.pt`/`.pth` file holding a state_dict, or a training checkpoint that nests one under `state_dict`,
`model`, `model_state_dict` or `net` (read with torch.load(weights_only=True): no code is unpickled), and
`.safetensors` when the safetensors package is installed. A `module.` prefix left by DataParallel/DDP is dropped.
How the weights fill an enlarged BCNetV2 supernet is described in hwbcnet/supernet/supernet.py.
"""

from __future__ import annotations

from pathlib import Path

import torch

from hwbcnet.errors import HwbcnetError

_NESTED_KEYS = ("state_dict", "model", "model_state_dict", "net")


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise HwbcnetError(f"--weights {path}: file not found")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise HwbcnetError(f"--weights {path}: reading .safetensors needs `pip install safetensors`") from None
        try:
            state = load_file(str(path))
        except Exception as exc:
            raise HwbcnetError(f"--weights {path}: unreadable safetensors file ({type(exc).__name__})") from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise HwbcnetError(f"--weights {path}: not a readable state_dict ({type(exc).__name__}); save it with "
                               "torch.save(model.state_dict(), path)") from None
    for key in _NESTED_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise HwbcnetError(f"--weights {path}: expected a state_dict (names -> tensors); save it with "
                           "torch.save(model.state_dict(), path)")
    if all(key.startswith("module.") for key in state):
        state = {key[len("module."):]: value for key, value in state.items()}
    return state
