"""Knowledge distillation as a task: a student CLIP trained through the same trainer (``mmfm train`` with
``task.name: distill``) learns the teacher's in-batch similarity structure; only the student is optimised and
saved; a teacher with another tokenizer and input size is handled; misconfigurations fail clearly."""
import json
from pathlib import Path

import pytest
import torch
import yaml

import mmfm
from mmfm.commands.train import main as train_main
from mmfm.config import ConfigError, load_experiment
from mmfm.models import build_model, get_model_config, save_pretrained
from mmfm.tasks import build_task
from mmfm.tasks.distill import kd_loss

from train_helpers import load_weights, make_shards, max_diff

SMALL = {"name": "tiny", "embed_dim": 16, "vision": {"timm_kwargs": {"patch_size": 8, "embed_dim": 16, "depth": 1,
                                                                     "num_heads": 1}},
         "text": {"width": 16, "layers": 1, "heads": 1}}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("teacher") / "ckpt"
    save_pretrained(build_model("tiny"), None, d)
    return d


def _cfg(tmp_path, teacher, shards, **distill):
    path = tmp_path / "distill.yaml"
    path.write_text(yaml.safe_dump({
        "task": {"name": "distill", "distill": {"teacher": str(teacher), "temperature": 2.0, **distill}},
        "model": SMALL,
        "data": {"train": [{"path": shards}], "batch_size": 16, "workers": 0, "shuffle_buffer": 16,
                 "train_augment": False},
        "train": {"output_dir": str(tmp_path / "run"), "max_steps": 16, "warmup_steps": 2, "lr": 3e-3,
                  "weight_decay": 0.0, "log_every": 1, "ckpt_every_steps": None, "progress": False,
                  "tensorboard": False}}))
    return path


def _metrics(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines if x.strip()]


def test_kd_loss_is_zero_only_when_the_student_matches():
    t = torch.randn(6, 6)
    assert kd_loss(t.clone(), t, 2.0).abs() < 1e-6
    assert kd_loss(torch.randn(6, 6), t, 2.0) > 0.01


def test_student_learns_the_teacher_through_mmfm_train(teacher, tmp_path):
    shards = make_shards(tmp_path / "shards", 64, 32)
    cfg_path = _cfg(tmp_path, teacher, shards, kd_weight=1.0, contrastive_weight=0.0)
    before = load_weights(teacher)
    assert train_main([str(cfg_path)]) == 0
    rows = [r for r in _metrics(tmp_path / "run") if "train/loss_kd" in r]
    first, last = rows[:4], rows[-4:]
    mean = lambda rs, k: sum(r[k] for r in rs) / len(rs)  # noqa: E731
    assert mean(last, "train/loss_kd") < 0.6 * mean(first, "train/loss_kd")
    ckpt = tmp_path / "run" / "checkpoints" / "latest"
    # on a fixed batch, the trained student is much closer to the teacher than a fresh student
    cfg = load_experiment(cfg_path)
    fresh_task, trained_task = build_task(cfg), build_task(cfg, model=mmfm.load(ckpt))
    from PIL import Image
    from train_helpers import png
    import io
    proc = fresh_task.processor(train=False)
    items = [proc({"__key__": str(i), "image": Image.open(io.BytesIO(png(i))).convert("RGB"),
                   "txt": f"colour {i % 6} item k{i % 3}"}) for i in range(32)]
    batch = {k: torch.stack([it[k] for it in items]) for k in items[0] if k != "key"}
    with torch.no_grad():
        kd_fresh, kd_trained = fresh_task.eval()(batch)["loss_kd"], trained_task.eval()(batch)["loss_kd"]
    assert kd_trained < 0.5 * kd_fresh
    student = mmfm.load(ckpt)                       # a plain CLIP: the teacher is not in the checkpoint
    assert student.embed_dim == 16 and not any(k.startswith("teacher") for k in load_weights(ckpt))
    assert max_diff(load_weights(teacher), before) == 0.0            # the teacher was never updated
    assert yaml.safe_load((ckpt / "config.yaml").read_text())["task"]["distill"]["teacher"] == str(teacher)
    # mmfm eval compare puts the student next to its teacher: smaller, and measured on the same images
    from mmfm.eval.compare.variants import compare_models
    res = compare_models(str(teacher), str(Path(__file__).parents[2] / "data_recipes/image_folder/fixture"),
                         [str(ckpt)], latency_images=2, progress=False)
    t_row, s_row = res.metrics["rows"]
    assert s_row["parameters"] < t_row["parameters"] and s_row["size_ratio"] < 1
    assert s_row["metric"]["samples"] == t_row["metric"]["samples"] == 6


def test_teacher_with_other_tokenizer_and_input_size(tmp_path):
    torch.manual_seed(1)
    big = get_model_config({"name": "tiny", "vision": {"image_size": 48}, "text": {"context_length": 20}})
    save_pretrained(build_model(big), None, tmp_path / "teacher")
    cfg = load_experiment(_cfg(tmp_path, tmp_path / "teacher", str(tmp_path)))
    task = build_task(cfg)
    assert task.separate_tokens and task.teacher_size == (48, 48)
    proc = task.processor(train=False)
    from PIL import Image
    samples = [proc({"__key__": str(i), "image": Image.new("RGB", (40, 40), (30 * i, 10, 10)), "txt": f"item {i}"})
               for i in range(4)]
    assert samples[0]["teacher_text_ids"].shape == (20,) and samples[0]["text_ids"].shape == (16,)
    batch = {k: torch.stack([s[k] for s in samples]) for k in samples[0] if k != "key"}
    out = task(batch)
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and all(p.grad is None for p in task.teacher.parameters())
    # the teacher judges the same view: its pixels are the student's, re-normalised and resized
    with torch.no_grad():
        ref = task.teacher.encode_image(task.teacher_pixels(batch["image"]), normalize=True)
        assert torch.allclose(task.teacher_features(batch)[0], ref, atol=1e-6)


def test_misconfigurations_fail_with_the_key(teacher, tmp_path):
    with pytest.raises(ConfigError, match="task.distill.teacher"):
        build_task(load_experiment(data={"task": {"name": "distill"}, "model": SMALL}))
    with pytest.raises(ConfigError, match="checkpoint not found"):
        build_task(load_experiment(data={"task": {"name": "distill", "distill": {"teacher": str(tmp_path / "no")}},
                                         "model": SMALL}))
    with pytest.raises(ConfigError, match="feature_weight"):
        build_task(load_experiment(data={"task": {"name": "distill", "distill": {"teacher": str(teacher),
                                                                                 "feature_weight": 1.0}},
                                         "model": SMALL}))
    with pytest.raises(ConfigError, match="temperature"):
        load_experiment(data={"task": {"name": "distill", "distill": {"temperature": 0}}})


def test_example_config_loads_strictly_and_builds(teacher, repo_root):
    cfg = load_experiment(repo_root / "configs/experiments/distill/emoji_student.yaml",
                          [f"task.distill.teacher={teacher}"])
    task = build_task(cfg)
    assert cfg.task.name == "distill" and task.model.embed_dim == 128 and task.dc.temperature == 2.0
    assert task.teacher_size == (32, 32) and not task.same_pixels          # 48 px student, 32 px fixture teacher
