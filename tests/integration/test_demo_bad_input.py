"""Bad input for the demo: a machine without apt or without root gets told what to install and the
setup stops cleanly (non-zero, no hang); missing Debian files stop `mmfm demo` before any work;
a wrong --redo stage or a broken demo config is a clear error."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tools" / "ensure_apt.sh"


def _fake_bin(tmp_path: Path, tools: dict[str, str]) -> Path:
    """A PATH folder holding only the given shell scripts (plus the coreutils the script needs)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name, body in tools.items():
        p = bindir / name
        p.write_text(f"#!/bin/sh\n{body}\n")
        p.chmod(p.stat().st_mode | stat.S_IXUSR)
    return bindir


def _run_script(bindir: Path, *pkgs: str) -> subprocess.CompletedProcess:
    bash = "/bin/bash" if os.path.exists("/bin/bash") else "bash"
    return subprocess.run([bash, str(SCRIPT), *pkgs], env={"PATH": str(bindir)}, capture_output=True, text=True,
                          timeout=30)


def test_no_apt_explains_what_to_install(tmp_path):
    bindir = _fake_bin(tmp_path, {"dpkg": "exit 1"})        # every package missing, no apt-get on PATH
    proc = _run_script(bindir, "fonts-noto-color-emoji", "unicode-data")
    assert proc.returncode != 0
    assert "fonts-noto-color-emoji" in proc.stderr and "unicode-data" in proc.stderr
    assert "no apt-get" in proc.stderr


def test_no_root_explains_the_apt_command(tmp_path):
    bindir = _fake_bin(tmp_path, {"dpkg": "exit 1", "id": "echo 1000", "apt-get": "echo SHOULD-NOT-RUN; exit 0"})
    proc = _run_script(bindir, "fonts-noto-color-emoji")
    assert proc.returncode != 0
    assert "apt-get install -y fonts-noto-color-emoji" in proc.stderr
    assert "SHOULD-NOT-RUN" not in proc.stdout


def test_installed_packages_need_nothing(tmp_path):
    bindir = _fake_bin(tmp_path, {"dpkg": "exit 0"})
    proc = _run_script(bindir, "fonts-noto-color-emoji")
    assert proc.returncode == 0 and not proc.stderr


def test_demo_names_the_missing_debian_files(monkeypatch, tmp_path):
    from mmfm.commands import demo
    from mmfm.config import ConfigError
    from mmfm.data.shards import options

    monkeypatch.setattr(options, "EMOJI_FONT", str(tmp_path / "NotoColorEmoji.ttf"))
    with pytest.raises(ConfigError) as e:
        demo._check_system()
    assert "fonts-noto-color-emoji" in str(e.value) and "apt-get install" in str(e.value)
    assert not (tmp_path / "out").exists()


def test_cli_bad_stage_and_bad_config(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "mmfm", "demo", "--out", str(tmp_path / "o"), "--redo", "clipp"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "clipp" in proc.stderr
    bad = tmp_path / "cfg"
    bad.mkdir()
    (bad / "demo.yaml").write_text("shards: {image_sise: 64}\n")
    proc = subprocess.run([sys.executable, "-m", "mmfm", "demo", "--out", str(tmp_path / "o"), "--config-dir", str(bad)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "shards.image_sise" in proc.stderr and "image_size" in proc.stderr
    assert not (tmp_path / "o" / ".done").exists()
