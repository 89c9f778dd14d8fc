"""The attack benchmark's controls (#13 defect 2): singleton captions are split into training members
and non-members, each drawn only from its own population."""

from __future__ import annotations

import polars as pl

from bench.attack import control_captions


def test_singleton_controls_are_labelled_members_and_non_members():
    top = pl.DataFrame(
        {
            "cluster_id": list(range(12)),
            "duplicate_count": [30, 9, 2] + [1] * 9,
            "representative_key": [f"k{i}" for i in range(12)],
            "caption": [f"c{i}" for i in range(12)],
            "keys": [[f"k{i}"] for i in range(12)],
        }
    )
    members = {"k0", "k1", "k2", "k3", "k4", "k5"}  # trained on: the duplicated groups and three singletons
    picked = control_captions(top, members, per_group=2, seed=0)
    by = {name: part for (name,), part in picked.group_by("population", maintain_order=True)}
    assert by["duplicated"]["cluster_id"].to_list() == [0, 1]
    assert set(by["singleton, member"]["representative_key"]) <= {"k3", "k4", "k5"}
    assert set(by["singleton, non-member"]["representative_key"]) <= {f"k{i}" for i in range(6, 12)}
    assert by["singleton, member"].height == by["singleton, non-member"].height == 2
    assert picked["rank"].to_list() == list(range(6))
    # fewer members than asked: all of them, never a non-member in their place
    few = control_captions(top, {"k0", "k3"}, per_group=3, seed=1)
    assert few.filter(pl.col("population") == "singleton, member")["representative_key"].to_list() == ["k3"]
