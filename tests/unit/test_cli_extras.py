"""A command whose optional extra is not installed says which extra to install, in one line, for the command and
for its --help (here the service, without fastapi). The import is really refused in a child process."""
import subprocess
import sys
import textwrap


def _run_without(module: str, argv: list[str]) -> subprocess.CompletedProcess:
    code = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == {module!r} or name.startswith({module!r} + "."):
                    raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        sys.meta_path.insert(0, Block())
        from mmfm.cli import main
        sys.exit(main({argv!r}))
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_serve_without_fastapi_names_the_extra():
    for argv in (["serve", "--help"], ["serve", "--model", "runs/x"]):
        r = _run_without("fastapi", argv)
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert lines == ["mmfm serve: needs the optional package 'fastapi': pip install 'mmfm[serve]'"], r.stderr


def test_export_without_onnx_names_the_extra():
    r = _run_without("onnx", ["export", "runs/none", "--format", "onnx", "--out", "x"])
    assert r.returncode == 2 and "mmfm[export]" in r.stderr, r.stderr


def test_s3_url_without_s3fs_names_the_extra(tmp_path):
    table = tmp_path / "t.jsonl"
    table.write_text('{"image": "a.png", "caption": "x"}\n')
    r = _run_without("s3fs", ["shards", "build", str(table), "--out", "s3://bucket/shards"])
    assert r.returncode == 2, r.stderr
    assert "--out: s3://bucket/shards: the filesystem for 's3://' is not installed (pip install 'mmfm[s3]')" \
        in r.stderr, r.stderr
