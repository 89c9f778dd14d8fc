"""No code runs from data (#15 case 6): every file a user can hand the tool that numpy or torch could
unpickle is loaded without unpickling, and a crafted one is refused with its payload never run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attack.layout import AttackDir
from dedup.core.errors import UserError
from dedup.core.layout import WorkDir


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_the_reports_reference_file_with_a_pickle_is_refused(tmp_path):
    from attack.report import _extracted_pairs

    work = WorkDir(tmp_path / "w")
    paths = AttackDir(work.attack_dir)
    paths.root.mkdir(parents=True)
    marker = tmp_path / "pwned"
    np.savez(paths.reference, images=np.array([_Payload(str(marker))], dtype=object))
    with pytest.raises(UserError, match=r"reference\.npz: unreadable"):
        _extracted_pairs(work, tmp_path / "out")
    assert not marker.exists()


def test_a_checkpoint_with_a_pickled_object_is_refused(tmp_path):
    from attack.train import load_checkpoint

    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    torch.save({"config": {"unet": {}}, "evil": _Payload(str(marker))}, path)
    with pytest.raises(UserError, match="not a checkpoint"):
        load_checkpoint(path)
    assert not marker.exists()


def test_generations_with_a_pickled_prompt_array_are_refused(tmp_path):
    from attack.sample import load_generations

    marker = tmp_path / "pwned"
    path = tmp_path / "g.npz"
    np.savez(
        path, images=np.zeros((1, 8, 8, 3), np.uint8), prompts=np.array([_Payload(str(marker))], dtype=object)
    )
    with pytest.raises(UserError, match="pickled objects"):
        load_generations(path)
    assert not marker.exists()
