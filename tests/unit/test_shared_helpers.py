"""The small things done one way: rank lookup and gather (mmfm.data.ranks), the even subsample
(mmfm.data.sampling), the pixel limit (mmfm.config.data.DEFAULT_MAX_PIXELS) and atomic writes (mmfm.config.files)."""
import os
import re
from pathlib import Path

import pytest
import torch.distributed as dist

from mmfm.config import atomic_dir, atomic_path, atomic_write, replace_dir, temp_dir_beside
from mmfm.config.data import DEFAULT_MAX_PIXELS
from mmfm.data.ranks import all_gather_object, rank_world
from mmfm.data.sampling import even_indices, even_subsample

ROOT = Path(__file__).resolve().parents[2]


def test_rank_world_without_a_group_and_from_an_explicit_world():
    assert rank_world() == (0, 1) and all_gather_object({"a": 1}) == [{"a": 1}]
    assert rank_world(4) == (0, 4) and rank_world((2, 3)) == (2, 3) and rank_world([1, 2]) == (1, 2)


def test_rank_world_and_gather_inside_a_process_group():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        assert rank_world() == (0, 1) and all_gather_object([1, 2]) == [[1, 2]]
    finally:
        dist.destroy_process_group()


def test_the_duplicates_are_gone():
    """One definition each: no second rank lookup, all-gather, even subsample or pixel-limit literal in mmfm."""
    text = {p: p.read_text(encoding="utf-8") for p in (ROOT / "mmfm").rglob("*.py")}
    def where(pattern):
        return sorted(str(p.relative_to(ROOT)) for p, t in text.items() if re.search(pattern, t))
    assert where(r"get_world_size\(\)") == ["mmfm/data/ranks.py"]
    assert where(r"dist\.all_gather_object\(") == ["mmfm/data/ranks.py"]
    assert where(r"89_?478_?485") == ["mmfm/config/data.py"]
    assert where(r"i \* (total|len\(items\)) ?// ?n|\* step\) for i in range") == ["mmfm/data/sampling.py"]


def test_even_subsample_spreads_over_the_list():
    assert even_indices(10, 4) == [0, 2, 5, 7]
    assert even_indices(3, 5) == even_indices(3, None) == [0, 1, 2]
    assert even_subsample(list("aaabbbccc"), 3) == ["a", "b", "c"]                 # a sorted list keeps its mix
    # exact integer arithmetic: 11 * (30 / 22) in floats is 14.999..., so a float step picked item 14, not 15
    assert even_indices(30, 22)[11] == 15 and len(set(even_indices(1498, 1496))) == 1496


def test_one_pixel_limit_is_pils_own_and_every_default_uses_it():
    from PIL import Image

    from mmfm.commands import retrieval, zeroshot
    from mmfm.config.data import DataConfig
    from mmfm.data.decode import Decoder
    from mmfm.data.shards.options import ImageOptions

    assert DEFAULT_MAX_PIXELS == Image.MAX_IMAGE_PIXELS
    assert DataConfig().max_pixels == ImageOptions().max_pixels == Decoder().max_pixels == DEFAULT_MAX_PIXELS
    for cmd in (zeroshot, retrieval):
        assert cmd.build_parser().get_default("max_pixels") == DEFAULT_MAX_PIXELS


def test_atomic_write_and_path_leave_no_temp_and_keep_the_old_file_on_failure(tmp_path):
    target = tmp_path / "sub" / "a.txt"
    atomic_write(target, "one")
    assert target.read_text() == "one"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash while writing")
    assert target.read_text() == "one" and sorted(p.name for p in target.parent.iterdir()) == ["a.txt"]
    link = tmp_path / "latest"
    for name in ("x", "y"):                          # a symlink is replaced in one rename too
        with atomic_path(link) as tmp:
            os.symlink(name, tmp)
    assert os.readlink(link) == "y" and sorted(p.name for p in tmp_path.iterdir()) == ["latest", "sub"]


def test_atomic_dir_replaces_a_folder_or_leaves_it_as_it_was(tmp_path):
    target = tmp_path / "model"
    with atomic_dir(target) as tmp:
        (tmp / "w").write_text("1")
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o777 & ~umask           # not mkdtemp's 0700
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "w").write_text("2")
            raise RuntimeError("crash while filling")
    assert (target / "w").read_text() == "1"
    with atomic_dir(target) as tmp:
        (tmp / "v").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["v"] and [p.name for p in tmp_path.iterdir()] == ["model"]
    tmp = temp_dir_beside(target)                     # two steps: several writers fill, one publishes
    (tmp / "u").write_text("3")
    replace_dir(tmp, target)
    assert sorted(p.name for p in target.iterdir()) == ["u"] and [p.name for p in tmp_path.iterdir()] == ["model"]
