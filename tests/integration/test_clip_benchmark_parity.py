"""Equal numbers with CLIP_benchmark: on WebDataset benchmark folders written in its format (one classification
set over 3 shards with webp/png/jpg images, one retrieval set with 1-3 captions per image) and a tiny open_clip
model, mmfm's acc1, acc5, mean per-class recall and retrieval recall@1/5/10 equal what ``clip_benchmark eval``
(1.6.2, in the anchors venv of bench/anchor_venv.sh) writes. Skipped only where that venv is missing.

The reference run goes through bench/clip_benchmark_parity.py, which replaces CLIP_benchmark's ``accuracy()``
(``float()`` on a one-element numpy array fails under numpy 2) with the same arithmetic, and runs both sides in
fp32 (``--no_amp``)."""
import pytest

from bench.clip_benchmark_parity import ANCHOR_PY, anchor_metrics, mmfm_metrics
from tests.clip_benchmark_fixtures import write_wds_classification, write_wds_retrieval

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not ANCHOR_PY.exists(), reason=f"anchors venv missing ({ANCHOR_PY}); "
                                                                 "create it with bash bench/anchor_venv.sh")]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_oc):
    d = tmp_path_factory.mktemp("cbparity")
    write_wds_classification(d / "tiny_cls")
    write_wds_retrieval(d / "tiny_ret")
    return d, tiny_oc


@pytest.mark.parametrize("dataset,keys", [
    ("wds/tiny_cls", ["acc1", "acc5", "mean_per_class_recall"]),
    ("wds/tiny_ret", [f"{d}_retrieval_recall@{k}" for k in (1, 5, 10) for d in ("image", "text")])])
def test_metrics_equal_clip_benchmark_eval(setup, dataset, keys):
    d, oc = setup
    root = str(d / "{dataset}")
    ours = mmfm_metrics(dataset, root, oc["spec"], ks=(1, 5, 10), batch_size=8)
    ref = anchor_metrics(dataset, root, oc["name"], str(oc["weights"]), task=ours["task"],
                         model_config=str(oc["config"]), ks=(1, 5, 10), batch_size=8)
    assert sorted(ref) == sorted(keys)
    for k in keys:
        # CLIP_benchmark averages in float32 (torch .mean()), mmfm divides counts in float64
        assert ours[k] == pytest.approx(ref[k], abs=1e-6), (k, ours[k], ref[k])
    assert 0 < ref[keys[0]] < 1
