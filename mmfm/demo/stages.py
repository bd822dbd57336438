"""A resumable pipeline of named stages, each skipped on re-run once its done-marker exists.

A stage writes its outputs under ``OUT/<stage>/`` and, last of all, ``OUT/.done/<stage>.json`` holding its
summary and a fingerprint of the settings it ran with. On the next run a stage whose marker exists with the
same fingerprint is skipped (its summary is reused); a stage without a marker runs, and may itself resume
from partial outputs (the trainer resumes from its last checkpoint, the shard builder from its last complete
shard). A stage whose fingerprint changed runs again, and so does every later stage that needs it: by default
every stage after it; a stage that names its ``needs`` runs again only when one of those did (so re-scoring a
finished run does not retrain a captioner that never read the scores).
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from mmfm.config import atomic_write_text


@dataclass
class Stage:
    name: str                                   # folder + marker name, e.g. "clip"
    title: str                                  # one line shown in the progress display
    run: Callable[[Any], dict]                  # run(ctx) -> summary dict (JSON-serialisable)
    fingerprint: Callable[[Any], dict] | None = None   # settings that make a previous result stale
    outputs: tuple[str, ...] = ()               # folders under OUT removed before a stale stage re-runs
    needs: tuple[str, ...] | None = None        # earlier stages whose re-run makes this one stale (None: all)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class StageRunner:
    """Runs stages in order with a header line per stage, skipping the ones already done."""

    def __init__(self, out: Path, stages: list[Stage], *, force: set[str] | None = None, stream=None):
        self.out = Path(out)
        self.stages = stages
        self.force = set(force or ())
        self.stream = stream or sys.stdout
        unknown = self.force - {s.name for s in stages} - {"all"}
        if unknown:
            from mmfm.config import ConfigError
            raise ConfigError(f"--redo: unknown stage(s) {', '.join(sorted(unknown))}; "
                              f"stages: {', '.join(s.name for s in stages)}")

    def marker(self, name: str) -> Path:
        return self.out / ".done" / f"{name}.json"

    def done(self, stage: Stage, fp: str) -> dict | None:
        path = self.marker(stage.name)
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if data.get("fingerprint") == fp else None

    def _clear(self, stage: Stage) -> None:
        import shutil
        for rel in stage.outputs:
            path = self.out / rel
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        self.marker(stage.name).unlink(missing_ok=True)

    def _say(self, msg: str) -> None:
        print(msg, file=self.stream, flush=True)

    def run(self, ctx) -> dict[str, dict]:
        results: dict[str, dict] = {}
        rerun: set[str] = set()              # the stages run (again) in this call
        n = len(self.stages)
        for i, stage in enumerate(self.stages, 1):
            fp = _digest(stage.fingerprint(ctx) if stage.fingerprint else {})
            stale = "all" in self.force or self._upstream_rerun(stage, i, rerun)
            prior = None if (stale or stage.name in self.force) else self.done(stage, fp)
            head = f"[{i}/{n}] {stage.title}"
            if prior is not None:
                self._say(f"{head}: done already ({prior.get('seconds', 0):.0f}s last time), skipped")
                results[stage.name] = prior["summary"]
                ctx.results[stage.name] = prior["summary"]
                continue
            if stale or stage.name in self.force or self.marker(stage.name).is_file():
                self._clear(stage)           # a finished-but-stale result: start clean, not resume
            rerun.add(stage.name)            # the stages that need it run again too
            self._say(f"{head} ...")
            t0 = time.monotonic()
            summary = stage.run(ctx) or {}
            seconds = time.monotonic() - t0
            ctx.results[stage.name] = summary
            results[stage.name] = summary
            atomic_write_text(self.marker(stage.name),
                              json.dumps({"stage": stage.name, "fingerprint": fp, "seconds": round(seconds, 2),
                                          "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "summary": summary},
                                         indent=1, default=str))
            _release_memory()
            self._say(f"{head}: done in {seconds:.0f}s (peak memory so far {_peak_rss_gb():.2f} GB)")
        return results


    def _upstream_rerun(self, stage: Stage, index: int, rerun: set[str]) -> bool:
        earlier = [s.name for s in self.stages[:index - 1]]
        needs = earlier if stage.needs is None else stage.needs
        return any(name in rerun for name in needs)


def _release_memory() -> None:
    """Between stages: collect the finished stage's models and caches, and give glibc's free heap back to the
    system, so one stage's leftovers do not add to the next stage's peak (the demo runs in one process)."""
    import ctypes
    import ctypes.util
    import gc
    gc.collect()
    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError, TypeError):   # not glibc: nothing to trim
        pass


def _peak_rss_gb() -> float:
    """This process's peak resident memory (Linux reports KiB, macOS bytes)."""
    import resource
    import sys
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**30 if sys.platform == "darwin" else peak / 2**20
