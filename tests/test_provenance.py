"""sweep.provenance: the versions and git commit recorded on every trial."""

from __future__ import annotations

import re
from pathlib import Path

import optuna
import torch

from sweep.provenance import environment, git_commit


def test_git_commit_of_this_checkout_and_none_outside_one(tmp_path: Path) -> None:
    commit = git_commit()
    assert commit is None or re.fullmatch(r"[0-9a-f]{40}", commit)  # an sdist test run has no .git
    assert git_commit(tmp_path) is None


def test_environment_names_the_libraries_that_trained() -> None:
    env = environment()
    assert env["torch"] == torch.__version__ and env["optuna"] == optuna.__version__
    assert set(env) == {"sweep", "torch", "torchvision", "optuna", "git_commit"}
