"""search -> extract -> finetune on a tiny supernet, through the Python API."""

import json

import numpy as np
import pytest
import torch

from hwbcnet.search.evolution import EvolutionConfig
from hwbcnet.search.extract import extract_subnet, finetune_subnet, load_subnet
from hwbcnet.search.runner import load_search, run_search
from hwbcnet.supernet.extract import build_standalone
from hwbcnet.training.trainer import TrainConfig, load_supernet, train_supernet


@pytest.fixture(scope="module")
def supernet_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("supernet")
    config = TrainConfig(model="resnet20", data="digits", principle="bcnetv2", resolution=16, width_mult=0.5,
                         epochs=2, batch_size=32, max_steps_per_epoch=10)
    return train_supernet(config, out, progress=False).checkpoint


def test_search_extract_finetune(supernet_checkpoint, tmp_path):
    out = tmp_path / "search.json"
    evolution = EvolutionConfig(population=6, generations=2, top_k=3, mutations=3, crossovers=3)
    result = run_search(supernet_checkpoint, out, flops="50%", params="80%", evolution=evolution,
                        calibration_batches=2, progress=False)
    saved = load_search(out)
    assert saved["arch"]["code"] == result["arch"]["code"]
    for budget in saved["budgets"]:
        value = saved["costs"][budget["cost"]]
        assert budget["low"] <= value <= budget["high"]
    assert set(saved["paths"]) == {"left", "right"} and saved["score"] == pytest.approx(
        (saved["paths"]["left"] + saved["paths"]["right"]) / 2)
    assert len(saved["checkpoint"]["sha256"]) == 64 and len(saved["top"]) == 3
    assert (tmp_path / "search-pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    subnet = extract_subnet(out, tmp_path / "subnet.pt")
    model, space, arch, payload = load_subnet(tmp_path / "subnet.pt")
    assert space.format_arch(arch) == saved["arch"]["code"]
    assert payload["path"] == max(saved["paths"], key=saved["paths"].get)
    assert 0 <= subnet["accuracy"]["val"] <= 100

    report = finetune_subnet(tmp_path / "subnet.pt", tmp_path / "tuned.pt", epochs=1, progress=False)
    assert set(report["before"]) == {"val", "test"}
    assert load_subnet(tmp_path / "tuned.pt")[3]["history"][-1]["stage"] == "finetune"


def test_extracted_subnet_equals_supernet_path(supernet_checkpoint):
    supernet, _ = load_supernet(supernet_checkpoint)
    space = supernet.space
    x = torch.randn(4, 3, space.resolution, space.resolution)
    for arch in space.random_archs(np.random.default_rng(1), 3):
        for path in ("left", "right"):
            standalone = build_standalone(space, arch, supernet, path).eval()
            with torch.no_grad():
                torch.testing.assert_close(supernet.activate(arch, path)(x), standalone(x), rtol=1e-5, atol=1e-5)


def test_search_resumes_from_state(supernet_checkpoint, tmp_path):
    evolution = EvolutionConfig(population=4, generations=2, top_k=2, mutations=2, crossovers=2)
    first = run_search(supernet_checkpoint, tmp_path / "a.json", flops="60%", evolution=evolution,
                       calibration_batches=2, progress=False)
    state = json.loads((tmp_path / "a.state.json").read_text())
    assert state["generation"] == 2
    again = run_search(supernet_checkpoint, tmp_path / "a.json", flops="60%", evolution=evolution,
                       calibration_batches=2, progress=False)  # finished state: no new evaluations
    assert again["arch"] == first["arch"] and again["queries"] == first["queries"]


def test_final_rescoring_covers_the_best_search_scores(supernet_checkpoint, tmp_path):
    """The `rescore` archs with the best search scores (beyond the top-k elites) are re-scored at the final fidelity
    and the pick is the best of them; re-scoring the elites alone can only do as well or worse."""
    evolution = EvolutionConfig(population=6, generations=2, top_k=2, mutations=3, crossovers=3)
    runs = {rescore: run_search(supernet_checkpoint, tmp_path / f"r{rescore}" / "search.json", flops="60%",
                                evolution=evolution, calibration_batches=1, final_calibration_batches=3,
                                rescore=rescore, progress=False) for rescore in (1, 6)}
    wide, elites = runs[6], runs[1]
    assert wide["queries"] == elites["queries"] >= 6  # the same evolution: only the final step differs
    assert wide["scoring"]["rescored"] == 6 and elites["scoring"]["rescored"] == 2  # the top-k at least
    state = json.loads((tmp_path / "r6" / "search.state.json").read_text())
    best_six = [code for _, code in sorted((-score, tuple(arch)) for arch, score in state["cache"])[:6]]
    supernet, _ = load_supernet(supernet_checkpoint)
    best_six = {supernet.space.format_arch(np.array(arch)) for arch in best_six}
    assert {entry["code"] for entry in wide["top"]} <= best_six and len(wide["top"]) == 2
    assert wide["arch"]["code"] == wide["top"][0]["code"] and wide["score"] == wide["top"][0]["score"]
    assert wide["top"][0]["score"] >= wide["top"][1]["score"]
    assert wide["score"] >= elites["score"]
