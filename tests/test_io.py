"""Saving and loading pruned models; atomic writes; fingerprints."""

from __future__ import annotations

import json
import os

import pytest
import torch

from rlprune.errors import CheckpointError
from rlprune.io import atomic_write_json, load_pruned, model_fingerprint, save_pruned
from rlprune.space.pruning import PruningSpace
from tests.arch_zoo import PlainFlatten

X = torch.randn(1, 3, 32, 32)


@pytest.fixture()
def pruned():
    torch.manual_seed(0)
    space = PruningSpace.from_model(PlainFlatten().eval(), X)
    return space, space.apply([0.5] * space.n_groups)


def test_round_trip_keeps_outputs_and_manifest(tmp_path, pruned):
    space, model = pruned
    manifest = {"ratios": [0.5] * space.n_groups, "group_ids": [g.id for g in space.groups],
                "base_fingerprint": model_fingerprint(space.model), "params": 1, "macs": 2, "acc": 97.0}
    mpath = save_pruned(model, tmp_path / "pruned_model.pt", manifest)
    assert mpath == tmp_path / "pruned_model.json"
    loaded, man = load_pruned(tmp_path)
    with torch.no_grad():
        assert torch.allclose(loaded(X), model(X))
    assert man["ratios"] == manifest["ratios"] and man["fingerprint"] == model_fingerprint(model)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_truncated_or_replaced_weights_are_reported(tmp_path, pruned):
    _, model = pruned
    path = tmp_path / "m.pt"
    save_pruned(model, path, {})
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="sha256"):
        load_pruned(path)


def test_missing_and_garbled_manifest(tmp_path, pruned):
    _, model = pruned
    with pytest.raises(CheckpointError, match="expected"):
        load_pruned(tmp_path / "nothing.pt")
    save_pruned(model, tmp_path / "m.pt", {})
    (tmp_path / "m.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="JSON"):
        load_pruned(tmp_path / "m.pt")


def test_fingerprint_tracks_weights():
    torch.manual_seed(0)
    a = PlainFlatten()
    torch.manual_seed(0)
    b = PlainFlatten()
    assert model_fingerprint(a) == model_fingerprint(b)
    with torch.no_grad():
        b.classifier[1].weight[0, 0] += 1e-3
    assert model_fingerprint(a) != model_fingerprint(b)


def test_atomic_json_replaces_whole_file(tmp_path):
    p = tmp_path / "x" / "a.json"
    atomic_write_json(p, {"a": 1})
    atomic_write_json(p, {"b": [1, 2]})
    assert json.loads(p.read_text()) == {"b": [1, 2]}
