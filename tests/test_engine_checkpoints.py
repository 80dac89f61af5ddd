"""Checkpoints written before the run machinery moved into ``mnv4.engine`` still resume exactly.

``tests/data/checkpoint_schemas.json`` holds the schemas (keys, types, tensor shapes, optimiser groups) of the
checkpoints that ``mnv4 train``, ``mnv4 detect train`` and ``mnv4 search`` wrote with the code before the move
(``tests/checkpoint_schema.py``). For each run:

- train: today's checkpoints have exactly that schema: the format did not change;
- detect: today's add ``best_step`` and ``epoch_totals`` and list the optimiser's two parameter groups in the other
  order. A checkpoint turned back into the old form -- its schema asserted equal to the recorded one -- resumes to the
  same weights, bit for bit, as an uninterrupted run;
- search: today's format is ``mnv4-search/2`` (the engine's layout). A checkpoint turned back into
  ``mnv4-search/1`` -- schema asserted equal -- resumes to the same search as an uninterrupted one, inside a stage
  and at a stage's end.
"""

from __future__ import annotations

import json

import pytest
import torch
from checkpoint_schema import SCHEMAS, detect_config, schema, search_config, train_run

from mnv4.engine.checkpoint import list_checkpoints

pytest.importorskip("sklearn", reason="the digits come from scikit-learn (dev extra)")

RECORDED = json.loads(SCHEMAS.read_text())


def without_config_values(tree: dict) -> dict:
    """A schema with the config's fields left out: configs gain fields over versions, and a checkpoint's config is
    read by name (``from_dict`` drops unknown keys and fills new ones with their defaults)."""
    return {**tree, "dict": {k: v for k, v in tree["dict"].items() if k != "config"}}


def load(path) -> dict:
    return torch.load(path, weights_only=True)


def test_train_checkpoints_keep_their_format(tmp_path):
    train_run(tmp_path)
    now = schema(load(list_checkpoints(tmp_path / "train")[-1]))
    assert now == RECORDED["train"]  # config included: TrainConfig's fields did not change either


# ----------------------------------------------------------------------------------------------- detection
def detect_to_legacy(ckpt: dict) -> dict:
    """A detection checkpoint as the code before the engine wrote it: no ``best_step`` / ``epoch_totals``, the
    optimiser's decayed group first."""
    old = {k: v for k, v in ckpt.items() if k not in ("best_step", "epoch_totals")}
    state = ckpt["optimizer"]
    no_decay, decay = state["param_groups"]
    assert no_decay["weight_decay"] == 0 < decay["weight_decay"]
    groups, new_state, ids = [], {}, iter(range(10**6))
    for group in (decay, no_decay):
        moved = []
        for pid in group["params"]:
            new_id = next(ids)
            if pid in state["state"]:
                new_state[new_id] = state["state"][pid]
            moved.append(new_id)
        groups.append({**group, "params": moved})
    old["optimizer"] = {"state": new_state, "param_groups": groups}
    return old


def test_detection_checkpoint_of_the_old_form_resumes_exactly(tmp_path):
    from safetensors.torch import load_file

    from mnv4.detection import train_detector

    # 2 epochs of 2 steps, validation at each epoch's end; cut after 3 steps (inside epoch 1)
    full = train_detector(detect_config(tmp_path, out=str(tmp_path / "full"), epochs=2))
    train_detector(detect_config(tmp_path, out=str(tmp_path / "cut"), epochs=2, max_steps=3))
    newest = list_checkpoints(tmp_path / "cut")[-1]
    legacy = detect_to_legacy(load(newest))
    assert without_config_values(schema(legacy)) == without_config_values(RECORDED["detect"])
    torch.save(legacy, newest)
    resumed = train_detector(detect_config(tmp_path, out=str(tmp_path / "cut"), epochs=2, resume="auto"))
    assert resumed.global_step == full.global_step == 4
    for name in ("model.safetensors", "model_ema.safetensors"):
        a, b = load_file(str(tmp_path / "full" / name)), load_file(str(tmp_path / "cut" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert resumed.best_ap == full.best_ap


# ----------------------------------------------------------------------------------------------- search
def search_to_legacy(ckpt: dict) -> dict:
    """A search checkpoint as ``mnv4-search/1`` wrote it. At a stage's end today's checkpoint already belongs to the
    next stage (epoch + 1, step 0, the stage's result recorded); the old one was the finished stage's last step."""
    at_stage_end = ckpt["step_in_epoch"] == 0 and ckpt["epoch"] > 0
    stage = ckpt["epoch"] - 1 if at_stage_end else ckpt["epoch"]
    stage_step = ckpt["steps_per_stage"] if at_stage_end else ckpt["step_in_epoch"]
    results = ckpt["results"][:-1] if at_stage_end else ckpt["results"]
    return {"format": "mnv4-search/1", "supernet": ckpt["model"], "optimizer": ckpt["optimizer"],
            "scheduler": ckpt["scheduler"], "learner": ckpt["learner"], "stage": stage, "stage_step": stage_step,
            "global_step": ckpt["global_step"], "steps_per_stage": ckpt["steps_per_stage"],
            "num_samples": ckpt["data_order"]["num_samples"], "results": results, "history": ckpt["search_history"],
            "rng": ckpt["rng"], "config": ckpt["config"]}


@pytest.mark.parametrize("stop_after", [3, 4])  # at the end of the coarse stage, inside the fine stage
def test_search_checkpoint_of_the_first_format_resumes_exactly(tmp_path, stop_after):
    from mnv4.nas import search

    full = search(search_config(tmp_path, out=str(tmp_path / "full")))
    stopped = search(search_config(tmp_path, out=str(tmp_path / "cut"), stop_after=stop_after))
    assert not stopped.complete
    newest = list_checkpoints(tmp_path / "cut")[-1]
    legacy = search_to_legacy(load(newest))
    recorded, now = without_config_values(RECORDED["search"]), without_config_values(schema(legacy))
    if stop_after == 4:  # the recorded checkpoint's position (step 1 of the fine stage): the same schema
        assert now == recorded
    else:  # the coarse stage's controller and optimiser have other sizes: the same entries of the same kinds
        assert {k: next(iter(v)) if isinstance(v, dict) else v for k, v in now["dict"].items()} == \
            {k: next(iter(v)) if isinstance(v, dict) else v for k, v in recorded["dict"].items()}
    for path in list_checkpoints(tmp_path / "cut"):  # only the old-form one is there to resume from
        path.unlink()
    torch.save(legacy, newest)
    resumed = search(search_config(tmp_path, out=str(tmp_path / "cut"), resume="auto"))
    assert resumed.history == full.history  # every loss, quality, cost, reward, baseline and entropy
    assert resumed.spec == full.spec and resumed.probabilities == full.probabilities
