"""mmfm against ``clip_benchmark eval`` on the same CLIP_benchmark WebDataset folders and the same open_clip model:
prints, per dataset, every metric from both sides and their difference.

    python bench/clip_benchmark_parity.py                       # tiny fixtures + a random tiny open_clip model
    python bench/clip_benchmark_parity.py --root benchmarks/ --dataset wds/vtab/cifar10 \\
        --model ViT-B-32 --weights epoch_32.pt                  # your own benchmark folders and weights

The CLIP_benchmark side runs in the anchors venv (bench/anchor_venv.sh: clip_benchmark 1.6.2) through its own CLI
(``clip_benchmark.cli.main`` with ``eval --dataset wds/NAME --dataset_root ROOT/{dataset} --no_amp``), after
registering the model's open_clip config. One change is made there: CLIP_benchmark 1.6.2's
``metrics.zeroshot_classification.accuracy`` calls ``float()`` on a one-element numpy array, which numpy 2 refuses;
it is replaced by a function with the same arithmetic (top-k hits summed as float, divided by n). Both sides run in
fp32 on the CPU (CLIP_benchmark's default autocast would be bf16 there).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ANCHOR_PY = ROOT / ".bench" / "anchors" / "bin" / "python"
CLASSIFICATION_KEYS = ("acc1", "acc5", "mean_per_class_recall")


# ----------------------------------------------------------------------------- anchor side (anchors venv)
def _patched_accuracy(output, target, topk=(1,)):
    """CLIP_benchmark 1.6.2's ``accuracy`` arithmetic, with ``.item()`` where it called ``float()`` on a
    one-element array (numpy 2 refuses that)."""
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    n = len(target)
    return [correct[:k].reshape(-1).float().sum(0, keepdim=True).cpu().numpy().item() / n for k in topk]


def _anchor_main(a) -> None:
    import open_clip
    from clip_benchmark import cli
    from clip_benchmark.metrics import zeroshot_classification
    if a.model_config:
        open_clip.add_model_config(a.model_config)
    zeroshot_classification.accuracy = _patched_accuracy      # numpy 2 (see the module doc); same arithmetic
    sys.argv = ["clip_benchmark", "eval", "--dataset", a.dataset, "--dataset_root", a.dataset_root,
                "--task", a.task, "--model", a.model, "--pretrained", a.weights, "--no_amp", "--num_workers", "0",
                "--batch_size", str(a.batch_size), "--output", a.output, "--quiet",
                "--recall_k", *[str(k) for k in a.ks]]
    cli.main()


def anchor_metrics(dataset: str, dataset_root: str, model: str, weights: str, *, task: str,
                   model_config: str | None = None, ks=(1, 5, 10), batch_size: int = 64,
                   python: str | None = None) -> dict:
    """What ``clip_benchmark eval --task TASK`` writes for ``dataset`` (its JSON's ``metrics``), run in the anchors
    venv. (Its ``--task auto`` knows retrieval only by dataset name, so the task is given.)"""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        cmd = [str(python or ANCHOR_PY), str(Path(__file__).resolve()), "--_anchor", "--dataset", dataset,
               "--dataset-root", dataset_root, "--model", model, "--weights", str(weights), "--output", out,
               "--task", task, "--batch-size", str(batch_size), "--ks", *[str(k) for k in ks]]
        if model_config:
            cmd += ["--model-config", str(model_config)]
        env = dict(os.environ, PYTHONPATH="", TQDM_DISABLE="1")
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800, cwd=tmp)
        if res.returncode != 0:
            raise RuntimeError(f"clip_benchmark eval failed on {dataset} (rc {res.returncode}):\n{res.stderr[-3000:]}")
        with open(out) as f:
            return json.load(f)["metrics"]


# ----------------------------------------------------------------------------- mmfm side
def mmfm_metrics(dataset: str, dataset_root: str, spec: str, *, ks=(1, 5, 10), batch_size: int = 64) -> dict:
    from mmfm.eval.benchmarks.clip_benchmark import evaluate_benchmark
    return evaluate_benchmark(spec, dataset, dataset_root=dataset_root, ks=ks, batch_size=batch_size, workers=0,
                              device="cpu", precision="fp32", progress=False).summary()


def compare(anchor: dict, ours: dict) -> list[tuple[str, float, float]]:
    """(metric, clip_benchmark, mmfm) for every metric CLIP_benchmark reported."""
    return [(k, float(v), float(ours[k])) for k, v in anchor.items()]


def _fixtures(tmp: Path) -> tuple[list[str], str, dict]:
    sys.path.insert(0, str(ROOT))
    from tests.clip_benchmark_fixtures import tiny_open_clip, write_wds_classification, write_wds_retrieval
    write_wds_classification(tmp / "tiny_cls")
    write_wds_retrieval(tmp / "tiny_ret")
    oc = tiny_open_clip(tmp)
    return ["wds/tiny_cls", "wds/tiny_ret"], str(tmp / "{dataset}"), oc


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--_anchor", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--output", help=argparse.SUPPRESS)
    p.add_argument("--task", help=argparse.SUPPRESS)
    p.add_argument("--model-config", help="open_clip model config JSON to register (a model not in open_clip)")
    p.add_argument("--dataset", nargs="+", help="wds/NAME datasets (default: tiny fixtures written here)")
    p.add_argument("--dataset-root", "--root", dest="dataset_root", help="template with {dataset}, as CLIP_benchmark's")
    p.add_argument("--model", help="open_clip model name")
    p.add_argument("--weights", help="open_clip state dict / checkpoint file")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--ks", type=int, nargs="+", default=[1, 5, 10])
    a = p.parse_args()
    if a._anchor:
        a.dataset = a.dataset[0]
        return _anchor_main(a)
    if not ANCHOR_PY.exists():
        raise SystemExit(f"anchors venv missing: run bash bench/anchor_venv.sh (expected {ANCHOR_PY})")
    with tempfile.TemporaryDirectory() as tmp:
        if a.dataset is None:
            datasets, root, oc = _fixtures(Path(tmp))
            model, weights, config = oc["name"], str(oc["weights"]), str(oc["config"])
        else:
            datasets, root, model, weights, config = a.dataset, a.dataset_root, a.model, a.weights, a.model_config
        spec = f"openclip:{config or model}:{weights}"
        for ds in datasets:
            ours = mmfm_metrics(ds, root, spec, ks=a.ks, batch_size=a.batch_size)
            anchor = anchor_metrics(ds, root, model, weights, task=ours["task"], model_config=config, ks=a.ks,
                                    batch_size=a.batch_size)
            print(f"{ds}  ({ours['n_samples']} images)")
            for k, ref, got in compare(anchor, ours):
                print(f"  {k:<28} clip_benchmark {ref:.6f}   mmfm {got:.6f}   diff {got - ref:+.2e}")


if __name__ == "__main__":
    main()
