"""NVIDIA machine facts that need neither TensorRT nor CUDA: which Jetson module this is (so `--device jetson` can
pick its profile), its L4T release, power mode and GPU clocks, and a discrete GPU's name and clocks from nvidia-smi.

Jetson detection reads, in order:
* /proc/device-tree/model: the board's model string ("NVIDIA Jetson Orin Nano Developer Kit");
* /sys/devices/soc0: the kernel's SoC device (`family` "Tegra", `machine` repeating the device-tree model, `soc_id`
  the chip: 35 = T234 Orin, 25 = T194 Xavier). Docker masks /proc/device-tree (a link into /sys/firmware) in every
  container that is not --privileged, so inside `docker run --runtime nvidia` the model comes from here;
* /etc/nv_tegra_release: the L4T release ("# R36 (release), REVISION: 4.0, ..."), which says "a Jetson" but not
  which module.
The power mode comes from `nvpmodel -q`, or, where nvpmodel is not installed (containers), from the two files it
keeps: /var/lib/nvpmodel/status ("pmode:0002") and /etc/nvpmodel.conf ("< POWER_MODEL ID=2 NAME=MAXN_SUPER >"),
mounted read-only as docs/jetson.md shows.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from hwbcnet.errors import HwbcnetError

# Where the machine's /proc, /sys and /etc are; tests point it at a fake file tree.
SYSTEM_ROOT = Path("/")

# Model-string keywords (lower case, "-" and "_" read as spaces) -> shipped profile.
JETSON_PROFILES = (("orin nano", "jetson-orin-nano"), ("orin nx", "jetson-orin-nx"), ("agx orin", "jetson-orin-agx"),
                   ("orin agx", "jetson-orin-agx"))
XAVIER_UNSUPPORTED = (
    "Jetson Xavier (NX and AGX) is not supported: its last JetPack is 5.1 with TensorRT 8.5 and Python 3.8, and "
    "hwbcnet needs TensorRT >= 10 and Python >= 3.10 (JetPack 6, Orin); time it through its CPU with a profile of "
    "your own (backend onnxruntime), or use an Orin module")
JETPACK4_UNSUPPORTED = (
    "Jetson Nano, TX1 and TX2 are not supported: their last JetPack is 4.6 with TensorRT 8.2, and hwbcnet needs "
    "TensorRT >= 10 (JetPack 6, Orin)")
# soc0/soc_id: the Tegra chip id in decimal.
_CHIPS = {35: "orin", 25: "xavier", 24: "tx2", 33: "tx1/nano", 64: "tk1", 38: "thor"}


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace").strip("\x00 \n")
    except OSError:
        return None


def _run(command: list[str]) -> subprocess.CompletedProcess | None:
    """The finished command, or None when it is not installed or could not run."""
    if shutil.which(command[0]) is None:
        return None
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None


# --------------------------------------------------------------------------------------------- Jetson detection


@dataclass(frozen=True)
class JetsonInfo:
    model: str | None  # the board's model string; None where neither device tree nor soc0 could be read
    source: str  # the file the model (or the bare fact "a Jetson") came from
    soc_id: int | None
    l4t: str | None  # first line of /etc/nv_tegra_release

    @property
    def l4t_major(self) -> int | None:
        match = re.search(r"R(\d+)", self.l4t or "")
        return int(match.group(1)) if match else None

    def describe(self) -> str:
        return self.model or f"a Jetson ({self.l4t or 'chip ' + str(self.soc_id)})"


def detect_jetson(root: Path | None = None) -> JetsonInfo | None:
    """This machine's Jetson module, or None when it is not a Jetson."""
    root = SYSTEM_ROOT if root is None else root
    release = _read(root / "etc/nv_tegra_release")
    l4t = release.splitlines()[0] if release else None
    soc = root / "sys/devices/soc0"
    family, soc_id_text = _read(soc / "family"), _read(soc / "soc_id")
    soc_id = int(soc_id_text) if soc_id_text and soc_id_text.isdigit() else None
    tegra = bool(family and family.lower().startswith("tegra"))
    model = _read(root / "proc/device-tree/model")
    if model and "jetson" in model.lower():
        return JetsonInfo(model, "/proc/device-tree/model", soc_id, l4t)
    machine = _read(soc / "machine")
    if machine and (tegra or "jetson" in machine.lower()):
        return JetsonInfo(machine, "/sys/devices/soc0/machine", soc_id, l4t)
    if tegra or l4t:
        # A Jetson on a carrier board whose device tree names something else, or a container that sees neither.
        return JetsonInfo(model if tegra else None, "/sys/devices/soc0" if tegra else "/etc/nv_tegra_release",
                          soc_id, l4t)
    return None


def jetson_profile_name(info: JetsonInfo, known: list[str]) -> str:
    """The shipped profile of this Jetson module; a one-line error for modules hwbcnet cannot or does not serve.
    `known`: the shipped jetson-* profile names (for the message)."""
    text = re.sub(r"[-_]", " ", (info.model or "").lower())
    for keyword, name in JETSON_PROFILES:
        if keyword in text:
            return name
    chip = _CHIPS.get(info.soc_id)
    if "thor" in text or chip == "thor":
        raise HwbcnetError(f"no shipped profile for {info.describe()}: copy profiles/jetson-orin-agx.toml, set its "
                           "name and power mode, and pass --device <your file>.toml")
    # The AGX Xavier's device tree calls it just "Jetson-AGX".
    if "xavier" in text or ("agx" in text and "orin" not in text) or chip == "xavier":
        raise HwbcnetError(XAVIER_UNSUPPORTED)
    if re.search(r"\b(nano|tx1|tx2|tk1)\b", text) or chip in ("tx2", "tx1/nano", "tk1"):
        raise HwbcnetError(JETPACK4_UNSUPPORTED)
    where = (f"its model string {info.model!r} names no module" if info.model else
             "neither /proc/device-tree/model nor /sys/devices/soc0/machine can be read here, as in some containers")
    raise HwbcnetError(f"this Jetson's module is unknown ({where}); pass its profile by name: {', '.join(known)}")


# --------------------------------------------------------------------------------------------- Jetson state


def parse_nvpmodel(text: str) -> str | None:
    """The power mode name from `nvpmodel -q` output ("NV Power Mode: MAXN")."""
    match = re.search(r"NV Power Mode:\s*(\S+)", text)
    return match.group(1) if match else None


def nvpmodel_from_files(root: Path) -> str | None:
    """The power mode name from nvpmodel's state file and configuration (both readable without root)."""
    status = _read(root / "var/lib/nvpmodel/status")
    conf = _read(root / "etc/nvpmodel.conf")
    match = re.search(r"pmode:0*(\d+)", status or "")
    if not match or not conf:
        return None
    mode = re.search(rf"^<\s*POWER_MODEL\s+ID={match.group(1)}\s+NAME=(\S+?)\s*>", conf, re.MULTILINE)
    return mode.group(1) if mode else None


def power_mode(root: Path) -> tuple[str | None, str]:
    """(power mode name or None, where it came from)."""
    if root == Path("/"):
        result = _run(["nvpmodel", "-q"])
        name = parse_nvpmodel(result.stdout) if result is not None and result.returncode == 0 else None
        if name:
            return name, "nvpmodel -q"
    name = nvpmodel_from_files(root)
    if name:
        return name, "/var/lib/nvpmodel/status"
    return None, "unavailable (no nvpmodel; in a container mount /var/lib/nvpmodel/status and /etc/nvpmodel.conf)"


def jetson_state(root: Path | None = None) -> dict | None:
    """Module, L4T release, power mode and GPU clock range of a Jetson; None elsewhere. jetson_clocks pins the GPU's
    devfreq minimum to its maximum, so min == max means the clocks are locked."""
    root = SYSTEM_ROOT if root is None else root
    info = detect_jetson(root)
    if info is None:
        return None
    mode, mode_source = power_mode(root)
    state = {"module": info.model, "module_source": info.source, "l4t": info.l4t, "power_mode": mode,
             "power_mode_source": mode_source}
    for devfreq in sorted((root / "sys/class/devfreq").glob("*gpu*")):
        low, high, cur = (_read(devfreq / name) for name in ("min_freq", "max_freq", "cur_freq"))
        if low and high:
            state.update(gpu_min_freq=int(low), gpu_max_freq=int(high), gpu_cur_freq=int(cur) if cur else None,
                         clocks_locked=low == high)
            break
    return state


# ----------------------------------------------------------------------------------------- discrete GPUs


# Drivers from 535 on call the throttle reasons "clock event reasons"; older ones know only the first name.
_REASON_FIELDS = ("clocks_event_reasons.active", "clocks_throttle_reasons.active")


def gpu_clock_state(pci_bus_id: str | None = None) -> dict:
    """Name, driver, current vs maximum SM clock and active clock-event (throttle) reasons of a discrete GPU from
    nvidia-smi (`pci_bus_id` picks the GPU being timed). {"source": "unavailable", "reason": ...} when nvidia-smi
    is missing, fails or answers in an unexpected form."""
    reason = "nvidia-smi is not installed"
    for reasons_field in _REASON_FIELDS:
        fields = ["name", "driver_version", "clocks.sm", "clocks.max.sm", reasons_field]
        command = ["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"]
        if pci_bus_id:
            command.append(f"--id={pci_bus_id}")
        result = _run(command)
        if result is None:
            break
        if result.returncode != 0:
            reason = f"nvidia-smi exited with {result.returncode}: {(result.stdout + result.stderr).strip()[:200]}"
            continue  # an older driver that does not know the field name: try the old one
        lines = [line for line in result.stdout.splitlines() if line.strip()]
        values = [part.strip() for part in lines[0].split(",")] if lines else []
        if len(values) != len(fields):
            reason = f"unexpected nvidia-smi output {result.stdout.strip()[:200]!r}"
            break
        name, driver, sm, max_sm, reasons = values
        return {"source": "nvidia-smi", "name": name, "driver_version": driver, "sm_clock_mhz": sm,
                "max_sm_clock_mhz": max_sm, "clock_event_reasons": reasons}
    return {"source": "unavailable", "reason": reason}


def clock_warnings(profile, jetson: dict | None) -> list[str]:
    """Differences between the state a profile expects (power mode, locked clocks) and what was found."""
    warnings = []
    if profile.power_mode or profile.locked_clocks:
        if jetson is None:
            return [f"profile {profile.name} expects a Jetson but this machine is not one"]
        if profile.power_mode and jetson.get("power_mode") != profile.power_mode:
            warnings.append(f"power mode is {jetson.get('power_mode')}, profile expects {profile.power_mode} "
                            "(sudo nvpmodel -m <id>)")
        if profile.locked_clocks and not jetson.get("clocks_locked"):
            warnings.append("GPU clocks are not locked (sudo jetson_clocks)")
    return warnings


def gpu_provenance(profile, pci_bus_id: str | None = None) -> dict:
    """The clock part of a GPU LUT's provenance: the Jetson's state or the dGPU's nvidia-smi clocks, and warnings."""
    jetson = jetson_state()
    return {"clock_state": jetson if jetson is not None else gpu_clock_state(pci_bus_id),
            "clock_warnings": clock_warnings(profile, jetson)}
