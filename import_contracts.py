"""A custom import-linter contract: no module imports another package's private names.

``from mmfm.models.checkpoint import _atomic_dir`` in ``mmfm/export/`` couples export to an internal detail of
models; inside one package (``mmfm.models.*`` importing ``mmfm.models.*``) private names are fine. Registered in
pyproject.toml's ``[tool.importlinter]`` as ``no_private_imports``. It lives at the repository root because
``lint-imports`` puts the folder it runs in on ``sys.path``: run bare at the root, it finds this module. (The
built-in ``private_modules`` contract checks private modules, not private names, so it cannot replace this one.)
"""
from __future__ import annotations

import ast
import importlib.util

from importlinter import Contract, ContractCheck, fields, output


def _package(module: str, depth: int) -> str:
    return ".".join(module.split(".")[:depth])


def private_imports(module: str, source: str, depth: int = 2) -> list[str]:
    """``"importer -> imported: name (line N)"`` for each private name ``module`` imports from another package
    (packages are the first ``depth`` parts of a dotted name: ``mmfm.models``)."""
    found = []
    is_pkg = False
    parts = module.split(".")
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = parts if is_pkg else parts[:-1]
            base = base[: len(base) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        if target.split(".")[0] != parts[0] or _package(target, depth) == _package(module, depth):
            continue
        for alias in node.names:
            if alias.name.startswith("_") and not alias.name.startswith("__"):
                found.append(f"{module} -> {target}: {alias.name} (line {node.lineno})")
    return found


class NoPrivateImports(Contract):
    """Options: ``depth`` (how many dotted parts name a package; default 2)."""

    depth = fields.IntegerField(required=False, default=2)

    def check(self, graph, verbose: bool) -> ContractCheck:
        problems = []
        for module in sorted(graph.modules):
            spec = importlib.util.find_spec(module)
            if spec is None or not spec.origin or not spec.origin.endswith(".py"):
                continue
            with open(spec.origin, encoding="utf-8") as f:
                problems += private_imports(module, f.read(), int(self.depth))
        return ContractCheck(kept=not problems, metadata={"problems": problems})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for line in check.metadata["problems"]:
            output.print_error(line)
