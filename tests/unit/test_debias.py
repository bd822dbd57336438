"""The debiasing projection (Chuang et al. 2023) on a constructed case whose bias direction is known, then on a real
tiny CLIP: attached to encode_text, saved with a checkpoint folder and picked up by the one loader."""
import torch
import torch.nn.functional as F

from mmfm.models import build_model, save_pretrained
from mmfm.models.checkpoint import load
from mmfm.models.debias import (DEBIAS_FILE, attach_debias, calibrated_projection, debias_from_spec,
                                embed_prompts, orthogonal_projection, save_debias)


def test_projection_removes_a_known_direction():
    d = 8
    bias = torch.zeros(d, dtype=torch.float64)
    bias[0] = 1.0                                        # the attribute lives on axis 0
    classes = torch.eye(d, dtype=torch.float64)[1:4]     # class directions on axes 1..3
    # class prompts carry the attribute in different amounts: "doctor" leans +, "nurse" leans -
    text = classes + torch.tensor([0.8, -0.6, 0.0], dtype=torch.float64)[:, None] * bias
    A = torch.stack([bias * 2.0 + 0.0 * classes[0]])    # a "male" prompt embedding along the bias axis
    P = orthogonal_projection(A)
    assert torch.allclose(P @ P, P, atol=1e-10) and torch.allclose(P, P.T, atol=1e-10)   # an orthogonal projector
    out = text @ P.T
    assert torch.allclose(out[:, 0], torch.zeros(3, dtype=torch.float64), atol=1e-10)   # no bias component left
    assert torch.allclose(out[:, 1:], classes[:, 1:], atol=1e-10)                        # class content unchanged
    # two prompts spanning the bias plane (axes 0 and 4): both components go, the rest stays
    A2 = torch.stack([torch.eye(d, dtype=torch.float64)[0] + torch.eye(d, dtype=torch.float64)[4],
                      torch.eye(d, dtype=torch.float64)[0] - torch.eye(d, dtype=torch.float64)[4]])
    expect = torch.eye(d, dtype=torch.float64)
    expect[0, 0] = expect[4, 4] = 0
    assert torch.allclose(orthogonal_projection(A2), expect, atol=1e-10)


def test_calibrated_projection_pulls_pairs_together():
    d = 6
    g = torch.Generator().manual_seed(0)
    P0 = orthogonal_projection(torch.eye(d, dtype=torch.float64)[:1])
    zi, zj = torch.randn(d, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)
    assert torch.equal(calibrated_projection(P0, [], 10.0), P0)
    before = (P0 @ (zi - zj)).norm()
    after = (calibrated_projection(P0, [(zi, zj)], 1000.0) @ (zi - zj)).norm()
    assert after < 0.01 * before                         # the pair's difference is (almost) projected away
    # closed form for one pair: P0 (I + lam dd^T)^-1 = P0 (I - lam dd^T / (1 + lam |d|^2))
    dd = (zi - zj)[:, None]
    sherman = P0 @ (torch.eye(d, dtype=torch.float64) - 3.0 * dd @ dd.T / (1 + 3.0 * (dd.T @ dd)))
    assert torch.allclose(calibrated_projection(P0, [(zi, zj)], 3.0), sherman, atol=1e-10)


def test_attached_to_a_real_clip_and_saved_with_the_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    save_pretrained(model, None, tmp_path / "clip")
    prompts = ["a photo of a man", "a photo of a woman"]
    spec = tmp_path / "prompts.txt"
    spec.write_text("\n".join(prompts) + "\n")
    clip = debias_from_spec(load(tmp_path / "clip"), spec)
    A = embed_prompts(clip, prompts)                     # raw (undebiased) embeddings of the bias prompts
    tok = clip.tokenizer(["a photo of a doctor", "a photo of a nurse"])
    with torch.inference_mode():
        z = clip.encode_text(tok["text_ids"], attention_mask=tok.get("attention_mask"))
        zn = clip.encode_text(tok["text_ids"], attention_mask=tok.get("attention_mask"), normalize=True)
    assert (z.double() @ A.double().T).abs().max() < 1e-4    # orthogonal to every bias prompt
    assert torch.allclose(zn, F.normalize(z, dim=-1), atol=1e-6)
    save_debias(tmp_path / "clip", clip.debias["P"], prompts)
    assert (tmp_path / "clip" / DEBIAS_FILE).is_file()
    again = load(tmp_path / "clip")                      # the one loader attaches it
    assert again.debias["prompts"] == prompts
    with torch.inference_mode():
        z2 = again.encode_text(tok["text_ids"], attention_mask=tok.get("attention_mask"))
    assert torch.allclose(z, z2, atol=1e-5)
    twice = attach_debias(again, torch.eye(z.shape[1]))  # re-attaching replaces, never stacks projections
    with torch.inference_mode():
        raw = twice.encode_text(tok["text_ids"], attention_mask=tok.get("attention_mask"))
    assert not torch.allclose(raw, z2, atol=1e-3)


def test_zeroshot_and_retrieval_commands_take_debias(tmp_path, capsys):
    import json

    from PIL import Image

    from mmfm.commands import retrieval as retrieval_cmd
    from mmfm.commands import zeroshot as zeroshot_cmd
    from mmfm.data.shards import write_shards
    torch.manual_seed(0)
    save_pretrained(build_model("tiny"), None, tmp_path / "clip")
    for i, c in enumerate(("cat", "dog")):
        (tmp_path / "photos" / c).mkdir(parents=True)
        for j in range(2):
            Image.new("RGB", (16, 16), (90 * i, 40 * j, 10)).save(tmp_path / "photos" / c / f"{j}.png")
    (tmp_path / "bias.txt").write_text("a photo of a man\na photo of a woman\n")
    runs = {}
    for flags in ([], ["--debias", str(tmp_path / "bias.txt")]):
        out = tmp_path / f"m{len(flags)}.json"
        assert zeroshot_cmd.main([str(tmp_path / "photos"), "--model", str(tmp_path / "clip"), "--templates", "{}",
                                  "--workers", "0", "--metrics", str(out), "--quiet", "--no-cache", *flags]) == 0
        runs[len(flags)] = json.loads(out.read_text())
    assert runs[0]["n_samples"] == runs[2]["n_samples"] == 4
    assert "debias" not in runs[0] and runs[2]["debias"]["prompts"] == ["a photo of a man", "a photo of a woman"]
    import io
    pngs = []
    for i in range(3):
        buf = io.BytesIO()
        Image.new("RGB", (16, 16), (80 * i, 20, 20)).save(buf, format="PNG")
        pngs.append(buf.getvalue())
    write_shards(({"__key__": f"k{i}", "png": p, "txt": f"photo {i}"} for i, p in enumerate(pngs)),
                 tmp_path / "pairs", shard_size=3)
    assert retrieval_cmd.main([str(tmp_path / "pairs"), "--model", str(tmp_path / "clip"), "--workers", "0",
                               "--debias", str(tmp_path / "bias.txt"), "--quiet", "--k", "1",
                               "--out", str(tmp_path / "r.json")]) == 0
    assert "R@1" in capsys.readouterr().out
    assert json.loads((tmp_path / "r.json").read_text())["debias"]["spec"] == str(tmp_path / "bias.txt")


def test_export_carries_the_projection(tmp_path, capsys):
    from mmfm.commands.export import main as export_main
    torch.manual_seed(0)
    save_pretrained(build_model("tiny"), None, tmp_path / "clip")
    (tmp_path / "bias.txt").write_text("a photo of a man\na photo of a woman\n")
    assert export_main([str(tmp_path / "clip"), "--format", "safetensors", "--out", str(tmp_path / "exp"),
                        "--debias", str(tmp_path / "bias.txt")]) == 0
    assert (tmp_path / "exp" / DEBIAS_FILE).is_file()
    model = load(tmp_path / "exp")
    assert model.debias["prompts"] == ["a photo of a man", "a photo of a woman"]
    A = embed_prompts(model, model.debias["prompts"])
    tok = model.tokenizer(["a photo of a doctor"])
    with torch.inference_mode():
        z = model.encode_text(tok["text_ids"], attention_mask=tok.get("attention_mask"))
    assert (z.double() @ A.double().T).abs().max() < 1e-4
    import pytest
    with pytest.raises(SystemExit):
        export_main([str(tmp_path / "clip"), "--format", "onnx", "--out", str(tmp_path / "o"),
                     "--debias", str(tmp_path / "bias.txt")])


def test_image_directions_recover_a_known_attribute_direction():
    """Items (content on axes 1..5) seen in three attribute values that shift along a known direction u: the top
    within-item direction is u, and projecting it out makes each item's variants identical while content stays."""
    from mmfm.models.debias import attach_image_debias, attribute_directions

    d = 10
    g = torch.Generator().manual_seed(0)
    u = torch.zeros(d, dtype=torch.float64)
    u[0], u[7] = 0.6, 0.8                                   # the attribute direction (unit)
    content = torch.randn(4, d, generator=g, dtype=torch.float64)
    content -= (content @ u)[:, None] * u                   # item content orthogonal to u
    shifts = torch.tensor([-1.0, 0.2, 1.5], dtype=torch.float64)
    Z = torch.cat([c + shifts[:, None] * u for c in content])    # 4 items x 3 values
    items = [i for i in range(4) for _ in range(3)] + ["alone"]
    Z = torch.cat([Z, torch.randn(1, d, generator=g, dtype=torch.float64)])   # an item seen once: ignored
    dirs, var = attribute_directions(Z, items, k=1)
    assert dirs.shape == (1, d) and abs(abs(float(dirs[0] @ u)) - 1) < 1e-10 and abs(var[0] - 1) < 1e-10
    P = orthogonal_projection(dirs)
    out = Z[:12] @ P.T
    assert torch.allclose(out.view(4, 3, d), out.view(4, 3, d)[:, :1].expand(4, 3, d), atol=1e-10)
    assert torch.allclose(out.view(4, 3, d)[:, 0], content, atol=1e-10)
    # attached to a real tiny CLIP: encode_image returns P z, renormalised on request
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        raw = model.encode_image(x)
        w = F.normalize(raw[:1] - raw[1:], dim=-1).double()
        attach_image_debias(model, orthogonal_projection(w), {"k": 1})
        z, zn = model.encode_image(x), model.encode_image(x, normalize=True)
    assert torch.allclose(z[0], z[1], atol=1e-4)            # the only difference was along w: now gone
    assert torch.allclose(zn.norm(dim=-1), torch.ones(2), atol=1e-5) and model.image_debias["k"] == 1
