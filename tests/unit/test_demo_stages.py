"""StageRunner: a re-run stage makes the later stages stale, all of them by default, or only those that name it
in their ``needs``."""
from __future__ import annotations

import io
from types import SimpleNamespace

from mmfm.demo.stages import Stage, StageRunner


def _stages(calls: list[str]) -> list[Stage]:
    def step(name):
        return lambda ctx: calls.append(name) or {"name": name}
    return [Stage("data", "data", step("data")), Stage("train", "train", step("train")),
            Stage("score", "score", step("score")),
            Stage("caption", "caption", step("caption"), needs=("data", "train")),
            Stage("report", "report", step("report"))]


def _run(out, force=()) -> list[str]:
    calls: list[str] = []
    StageRunner(out, _stages(calls), force=set(force), stream=io.StringIO()).run(SimpleNamespace(results={}))
    return calls


def test_redo_reruns_only_the_stages_that_need_it(tmp_path):
    assert _run(tmp_path) == ["data", "train", "score", "caption", "report"]
    assert _run(tmp_path) == []                                   # every marker matches: all skipped
    assert _run(tmp_path, {"score"}) == ["score", "report"]       # caption does not need score; report needs all
    assert _run(tmp_path, {"train"}) == ["train", "score", "caption", "report"]
    assert _run(tmp_path, {"all"}) == ["data", "train", "score", "caption", "report"]


def test_train_in_child_names_a_run_whose_process_died(tmp_path):
    """The general job trains each arm in a spawned process (its peak memory stays one run's); a child that fails
    is reported with the run folder and its exit code instead of a hang."""
    import pytest

    from mmfm.demo.child import train_in_child

    with pytest.raises(RuntimeError, match=r"training .*arm ended without a result \(exit code 1\)"):
        train_in_child(None, tmp_path / "arm")
