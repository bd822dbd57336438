import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest single-threaded (and do not fight other tests for the 2 cores). Use it with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------- tiny models built once per run (read-only)
@pytest.fixture(scope="session")
def tiny_oc(tmp_path_factory):
    """tests/clip_benchmark_fixtures.py's tiny open_clip (seed 4), shared by every module that evaluates it;
    tests read it and must not change it."""
    from tests.clip_benchmark_fixtures import tiny_open_clip
    return tiny_open_clip(tmp_path_factory.mktemp("tiny_open_clip"))


@pytest.fixture(scope="session")
def hf_captioner(tmp_path_factory):
    """``hf_captioner(family)`` -> the folder of tests/hf_captioners.py's tiny ``family`` model, saved once per
    run. Read-only: a test that edits a folder copies it first (shutil.copytree)."""
    from tests.hf_captioners import build
    root, built = tmp_path_factory.mktemp("hf_captioners"), {}

    def folder(family: str) -> str:
        if family not in built:
            built[family] = build(family, root / family)
        return built[family]
    return folder


# ---------------------------------------------------------------- one Ray cluster for the whole run
_RAY: dict = {}              # "head": the RayHead, "last": nodeid of the last collected test that uses it


def pytest_collection_modifyitems(session, config, items):
    users = [it.nodeid for it in items if {"ray_head", "ray_cluster"} & set(getattr(it, "fixturenames", ()))]
    _RAY["last"] = users[-1] if users else None


@pytest.fixture(scope="session")
def ray_head():
    """The run's one Ray cluster (``ray start --head``, tests/ray_head.py), started on first use."""
    pytest.importorskip("ray")
    from tests import ray_head as rh
    if "head" not in _RAY:
        _RAY["head"] = rh.start()
    return _RAY["head"]


@pytest.fixture(scope="session")
def ray_cluster(ray_head):
    """This process joined to the run's Ray cluster (``ray.init(address=...)``): in-process builds use it."""
    import ray
    from tests import ray_head as rh
    os.environ.update(rh.ENV)
    if not ray.is_initialized():
        ray.init(address=ray_head.address, log_to_driver=False, configure_logging=False)
    return ray


def _stop_ray() -> None:
    head = _RAY.pop("head", None)
    if head is not None:
        import ray
        if ray.is_initialized():
            ray.shutdown()
        head.stop()


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    if item.nodeid == _RAY.get("last"):          # its last user is done: give the cores and memory back
        _stop_ray()


def pytest_sessionfinish(session, exitstatus):
    _stop_ray()
