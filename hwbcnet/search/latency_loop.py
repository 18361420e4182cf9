"""Close the latency loop after a search: measure the pick on the device and, on a miss, correct the prediction.

Round r takes the best-scored evaluated arch that is legal under the current prediction and not rejected yet, builds
it standalone, converts it with the same torch -> ONNX path as `hwbcnet export`, and times it end to end together
with a few calibration subnets ("anchors", re-measured in the same interleaved rounds, so the machine's speed right
now is what they and the pick share). The pick is accepted when it measures inside [lower x budget, (1 - headroom)
x budget]; one at the budget's very edge (status "edge") would measure over it on the next try as often as not.

On a miss the LUT's calibration is refitted on the fresh anchors plus every pick measured so far and saved with its
provenance (the fit it replaces stays in the LUT's history); the pick is rejected, and from then on the prediction
is also corrected near what was measured (hwbcnet/costs/measured.py: a pick that measured 13 % under its prediction
makes its neighbours predicted lower too, an error a global refit cannot remove). Every evaluated arch is re-ranked
under that prediction, and when none is legal any more the search is run again under it (scores already known are
reused). After `rounds` measurements without a hit the loop stops and says so. A stale
calibration (the machine drifted since `lut calibrate`) and a pick the LUT mispredicts are both corrected this way;
a single point added to an old fit could do neither, which is why the anchors are re-measured.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from hwbcnet.errors import HwbcnetError
from hwbcnet.search.constraints import Constraints


@dataclass
class LoopConfig:
    rounds: int = 3  # picks measured at most
    repeats: int = 3  # interleaved measurement rounds per model (median)
    anchors: int = 8  # calibration subnets re-measured with every pick
    correct_near_measured: bool = True  # after a miss, scale predictions by the nearest measurements' ratios
    # A pick is accepted at most (1 - headroom) x budget: the median of interleaved rounds repeats within about 1 %
    # on a quiet CPU, so a pick measured at 0.999 x budget measures over it about every other time.
    headroom: float = 0.01

    def check(self) -> None:
        if self.rounds < 1:
            raise HwbcnetError(f"--verify-rounds {self.rounds}: must be at least 1")
        if self.repeats < 1:
            raise HwbcnetError(f"--verify-repeats {self.repeats}: must be at least 1")
        if self.anchors < 3:
            raise HwbcnetError(f"{self.anchors} anchors: a refit needs at least 3 calibration subnets")
        if not 0 <= self.headroom < 0.1:
            raise HwbcnetError(f"--verify-headroom {self.headroom}: must lie in [0, 0.1)")


def _first_legal(constraints: Constraints, ranked: list[tuple], rejected: set) -> tuple | None:
    keys = [key for key in ranked if key not in rejected]
    if not keys:
        return None
    legal = constraints.legal(np.array(keys, dtype=np.int64))
    return next((key for key, ok in zip(keys, legal) if ok), None)


def close_latency_loop(space, profile, lut_path: str | Path, ranked: list[tuple],
                       make_constraints: Callable[[], Constraints],
                       research: Callable[[Constraints, set], list[tuple]] | None = None,
                       config: LoopConfig = LoopConfig(), *, backend=None, source: dict | None = None,
                       progress: bool = True, log: Callable[[str], None] | None = None) -> dict:
    """Measure picks until one lies in the latency window or `config.rounds` picks were measured.

    `ranked`: every evaluated arch (tuples), best first; `make_constraints()` builds the constraints from the LUT
    file as it is now (it is rewritten on a miss); `research(constraints, known)` searches again under them and
    returns the new archs it evaluated, best first. Returns {"status": "met" | "unmet", "arch": the accepted arch
    (else the best measured one within the budget, else the fastest), "rounds": [...], "researched": n,
    "message": ...}."""
    from hwbcnet.costs.calibration import anchor_archs, measure_archs, refit_calibration
    from hwbcnet.costs.measured import NeighbourCorrected
    from hwbcnet.hardware.machine import machine_conditions
    from hwbcnet.hardware.lut import Lut

    config.check()
    log = log or (lambda message: None)
    ranked = list(ranked)
    rejected: set = set()
    measured_picks: list[tuple[tuple, float]] = []
    rounds: list[dict] = []
    researched = 0
    last_anchors, last_anchor_ms = np.zeros((0, space.num_vars), dtype=np.int64), np.zeros(0)
    for round_index in range(1, config.rounds + 1):
        try:
            constraints = make_constraints()
        except HwbcnetError as exc:  # e.g. the refitted calibration's guard band no longer leaves a window
            if not rounds:
                raise
            return _unmet(space, measured_picks, rounds, researched, f"stopped before round {round_index}: {exc}",
                          rounds[-1]["budget_ms"])
        latency = constraints.item("latency")
        if latency is None:
            raise HwbcnetError("verifying a search needs a latency budget (--latency with --device)")
        lut_cost = latency.cost
        if measured_picks and config.correct_near_measured:
            # the budget stays as resolved; only the prediction it is compared with changes
            latency.cost = NeighbourCorrected(
                lut_cost, np.concatenate([last_anchors, np.array([p for p, _ in measured_picks])]),
                np.concatenate([last_anchor_ms, [m for _, m in measured_picks]]))
        pick = _first_legal(constraints, ranked, rejected)
        if pick is None and research is not None:
            log(f"round {round_index}: no evaluated arch is legal under the corrected prediction; searching again")
            try:
                ranked = research(constraints, set(ranked)) + ranked
            except HwbcnetError as exc:  # e.g. the corrected window holds no arch the search can reach
                log(f"the new search failed: {exc}")
            researched += 1
            pick = _first_legal(constraints, ranked, rejected)
        if pick is None:
            message = (f"no arch left to measure in round {round_index}: under the corrected prediction every "
                       f"evaluated arch lies outside the latency window or measured outside it; raise the budget "
                       f"({latency.high:.3f} ms) or widen the window (--lower)")
            return _unmet(space, measured_picks, rounds, researched, message, latency.high)
        lut = Lut.load(lut_path)
        anchors = anchor_archs(space, lut, config.anchors)
        models = np.concatenate([anchors, np.array([pick], dtype=np.int64)])
        conditions = machine_conditions()
        times = measure_archs(space, profile, models, repeats=config.repeats, seed=round_index, backend=backend,
                              progress=progress)
        measured = np.median(times, axis=1)
        pick_ms = float(measured[-1])
        predicted_ms = float(latency.cost(np.array([pick]))[0])
        lut_predicted_ms = float(lut_cost(np.array([pick]))[0])
        accept_ms = (1.0 - config.headroom) * latency.high
        status = ("over" if pick_ms > latency.high else "edge" if pick_ms > accept_ms
                  else "under" if pick_ms < latency.low else "within")
        record = {"round": round_index, "arch": space.format_arch(pick), "predicted_ms": predicted_ms,
                  "lut_predicted_ms": lut_predicted_ms,
                  "measured_ms": pick_ms, "measured_rounds_ms": times[-1].tolist(), "budget_ms": latency.high,
                  "low_ms": latency.low, "limit_ms": latency.limit, "accept_ms": accept_ms, "status": status,
                  "anchors": [space.format_arch(a) for a in anchors], "anchors_ms": measured[:-1].tolist(),
                  **conditions}
        rounds.append(record)
        measured_picks.append((pick, pick_ms))
        log(f"round {round_index}: {record['arch']} predicted {predicted_ms:.3f} ms, measured {pick_ms:.3f} ms "
            f"(window [{latency.low:.3f}, {latency.high:.3f}] ms, accepted up to {accept_ms:.3f} ms): {status}")
        if status == "within":
            return {"status": "met", "arch": pick, "rounds": rounds, "researched": researched,
                    "message": f"{record['arch']} measures {pick_ms:.3f} ms, within [{latency.low:.3f}, "
                               f"{latency.high:.3f}] ms"}
        rejected.add(pick)
        last_anchors, last_anchor_ms = anchors, measured[:-1]
        picks = np.array([p for p, _ in measured_picks], dtype=np.int64)
        calibration = refit_calibration(
            lut, space, np.concatenate([anchors, picks]),
            np.concatenate([measured[:-1], [m for _, m in measured_picks]]),
            ["anchor"] * len(anchors) + ["pick"] * len(picks), conditions,
            {"source": "search --verify", **(source or {}), "round": round_index,
             "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})
        record["refit"] = {"a_ms": calibration["a_ms"], "b": calibration["b"]}
        log(f"refitted the LUT calibration on {len(anchors)} anchors and {len(picks)} pick(s): "
            f"T = {calibration['a_ms']:.4f} ms + {calibration['b']:.4f} x sum(cells)")
    message = (f"latency window [{rounds[-1]['low_ms']:.3f}, {rounds[-1]['budget_ms']:.3f}] ms not met after "
               f"{config.rounds} verification round(s): the picks measured "
               f"{', '.join(f'{m:.3f}' for _, m in measured_picks)} ms. The LUT calibration now reflects these "
               "measurements; raise the budget, widen the window (--lower) or allow more rounds (--verify-rounds)")
    return _unmet(space, measured_picks, rounds, researched, message, rounds[-1]["budget_ms"])


def _unmet(space, measured_picks, rounds, researched, message, high) -> dict:
    within_budget = [pick for pick, ms in measured_picks if ms <= high]  # under the window, but within the budget
    if within_budget:
        arch = within_budget[0]
    elif measured_picks:
        arch = min(measured_picks, key=lambda item: item[1])[0]
    else:
        arch = None
    return {"status": "unmet", "arch": arch, "rounds": rounds, "researched": researched, "message": message}
