"""Fashion-MNIST IDX files -> image folders for the old-domain probe (mmfm.demo.fashion_mnist), on IDX files
written here in Zalando's format, and on Debian's real files where dataset-fashion-mnist is installed."""
import gzip
import struct

import numpy as np
import pytest

from mmfm.config import ConfigError
from mmfm.demo.fashion_mnist import CLASSES, DEFAULT_DIR, read_idx, write_fashion_folders
from mmfm.eval.folder import scan_folder
from tests.helpers import fake_fashion, write_idx


def test_writes_class_balanced_folders_with_the_right_labels(tmp_path):
    src = fake_fashion(tmp_path / "src")
    out = write_fashion_folders(tmp_path / "fm", train_per_class=3, test_per_class=2, source=src)
    train, test = scan_folder(out["train"]), scan_folder(out["test"])
    assert len(train.paths) == 30 and len(test.paths) == 20
    assert train.classnames == sorted(CLASSES, key=lambda c: c.replace(" ", "_"))
    assert "ankle boot" in train.classnames
    assert out["classnames"].read_text().split("\n")[:-1] == train.classnames
    from PIL import Image
    for rel, t in zip(train.paths, train.targets):
        pixel = Image.open(out["train"] / rel).getpixel((0, 0))[0]
        assert CLASSES[pixel] == train.classnames[t]        # the folder a picture lands in is its own label
    again = write_fashion_folders(tmp_path / "fm", train_per_class=3, test_per_class=2, source=src)
    assert len(scan_folder(again["train"]).paths) == 30     # idempotent


def test_bad_idx_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="no such IDX file.*dataset-fashion-mnist"):
        read_idx(tmp_path / "missing.gz")
    bad = tmp_path / "bad.gz"
    with gzip.open(bad, "wb") as f:
        f.write(b"\x00\x00\x08\x03" + struct.pack(">3I", 2, 28, 28) + b"\x00" * 100)
    with pytest.raises(ConfigError, match=r"bad.gz: IDX header says \(2, 28, 28\)"):
        read_idx(bad)
    (tmp_path / "text.gz").write_bytes(gzip.compress(b"hello world"))
    with pytest.raises(ConfigError, match="text.gz: not an IDX file"):
        read_idx(tmp_path / "text.gz")
    src = fake_fashion(tmp_path / "src")
    write_idx(src / "t10k-labels-idx1-ubyte.gz", np.full(30, 12))
    with pytest.raises(ConfigError, match="label 12 is outside the 10 classes"):
        write_fashion_folders(tmp_path / "x", source=src)


@pytest.mark.skipif(not (DEFAULT_DIR / "t10k-labels-idx1-ubyte.gz").is_file(),
                    reason="Debian dataset-fashion-mnist is not installed")
def test_reads_debians_real_files():
    labels = read_idx(DEFAULT_DIR / "t10k-labels-idx1-ubyte.gz")
    assert labels.shape == (10000,) and np.bincount(labels).tolist() == [1000] * 10
