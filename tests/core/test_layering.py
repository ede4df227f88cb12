"""Who may import whom: the package layers, read from every module's imports (ast, nothing is run).

The layers (folders mapped into ``shoplens.*`` by ``[tool.setuptools] package-dir``):

- **core**: ``shoplens/*.py`` and ``shoplens/contract/``. Device and cloud both import it, so it
  imports neither of them (nor the converters, nor the demo) -- with one exception, the root CLI.
- **sdk** (``sdk_python/`` -> ``shoplens.sdk``) and **cloud** (``cloud/`` -> ``shoplens.cloud``):
  the two sides of the wire. Neither imports the other; what one of their commands needs from the
  other (the direct-Milvus sink, the catalog embedding of a re-index) is wired in the root CLI.
- **converters** (``converters/`` -> ``shoplens.converters``) and **cloud** never import each other
  (the converters may use the sdk's pre/post-processing: that is the phone's arithmetic).
- Nothing in the package imports the root CLI (commands are mounted by it, never register back),
  and benchmarks use the package's public names only.

Imports inside functions and under ``TYPE_CHECKING`` count: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]

#: The composition root: the one core module allowed to import sdk, cloud, converters and the demo.
#: Why: `shoplens` is one command; its entry module mounts each package's Typer app and hands each
#: command what it needs from another package (the cloud's MilvusSink to `shoplens index`, the sdk's
#: catalog embedding to `shoplens reindex --catalog`), so that those packages never import each other.
COMPOSITION_ROOTS = {"shoplens.cli"}

CORE_FORBIDDEN = ("shoplens.sdk", "shoplens.cloud", "shoplens.converters", "shoplens.demo")


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the imported module (``from a.b import c`` -> ``a.b`` and ``a.b.c``)
    names: tuple[str, ...]
    where: str  # path:line

    def __str__(self) -> str:
        return f"{self.where}: {self.module} imports {self.target}"


def package_dirs() -> dict[str, Path]:
    """``{"shoplens.sdk": <repo>/sdk_python, ...}`` from pyproject.toml."""
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return {pkg: ROOT / d for pkg, d in conf["package-dir"].items()}


def modules() -> dict[str, Path]:
    """Every module of the distribution: dotted name -> file (a mapped folder wins over its parent's walk)."""
    dirs = package_dirs()
    found: dict[str, Path] = {}
    for pkg, folder in sorted(dirs.items(), key=lambda kv: kv[0].count(".")):
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            if any(p.startswith(".") or p == "__pycache__" for p in parts):
                continue
            name = ".".join((pkg, *parts))
            found[name.removesuffix(".__init__")] = path
    return found


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def imports_of(module: str, path: Path) -> list[Import]:
    return parse_imports(module, path.read_text(), str(path.relative_to(ROOT)), _is_package(path))


def parse_imports(module: str, source: str, filename: str, is_package: bool = False) -> list[Import]:
    out: list[Import] = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        where = f"{filename}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            out += [Import(module, a.name, (), where) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, is_package, node)
            names = tuple(a.name for a in node.names)
            out.append(Import(module, target, names, where))
            out += [Import(module, f"{target}.{n}", (), where) for n in names if n != "*"]
        elif isinstance(node, ast.Call) and _is_import_module(node.func) and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                out.append(Import(module, arg.value, (), where))
    return out


def _is_import_module(func: ast.expr) -> bool:
    return (isinstance(func, ast.Attribute) and func.attr == "import_module") or (isinstance(func, ast.Name) and func.id == "import_module")


def _within(target: str, prefix: str) -> bool:
    return target == prefix or target.startswith(prefix + ".")


def all_imports() -> list[Import]:
    return [imp for name, path in modules().items() for imp in imports_of(name, path)]


def _layer(module: str) -> str:
    """The mapped package a module belongs to (by folder, so ``shoplens/demo.py`` is core, and
    ``samples/demo`` mapped to ``shoplens.demo`` is the demo); ``core`` for the ``shoplens/`` folder."""
    owner = max((pkg for pkg in package_dirs() if _within(module, pkg)), key=len)
    return "core" if owner == "shoplens" else owner.removeprefix("shoplens.")


def violations(imports: list[Import]) -> list[str]:
    """Every import statement that breaks a rule of this module's docstring (``path:line: rule: a imports b``)."""
    found: dict[tuple[str, str], str] = {}
    for imp in imports:
        src, dst = _layer(imp.module), imp.target
        rules = []
        if src == "sdk" and _within(dst, "shoplens.cloud"):
            rules.append("sdk must not import the cloud")
        if src == "cloud" and _within(dst, "shoplens.sdk"):
            rules.append("cloud must not import the sdk")
        if src == "converters" and _within(dst, "shoplens.cloud"):
            rules.append("converters must not import the cloud")
        if src == "cloud" and _within(dst, "shoplens.converters"):
            rules.append("cloud must not import the converters")
        if src == "core" and imp.module not in COMPOSITION_ROOTS and any(_within(dst, p) for p in CORE_FORBIDDEN):
            rules.append("the core must not import sdk/cloud/converters/demo")
        if _within(dst, "shoplens.cli") and imp.module not in {"shoplens.__main__", *COMPOSITION_ROOTS}:
            rules.append("only `python -m shoplens` imports the root CLI (it mounts the others)")
        for rule in rules:
            key = (imp.where, rule)
            if key not in found or len(dst) < len(found[key]):
                found[key] = dst
    return sorted(f"{where}: {rule}: {mod_of(where, imports)} imports {dst}" for (where, rule), dst in found.items())


def mod_of(where: str, imports: list[Import]) -> str:
    return next(i.module for i in imports if i.where == where)


def benchmark_private_imports() -> list[str]:
    """Benchmarks use public names only: a ``_private`` helper they need is API, and gets a public name."""
    bad = []
    for path in sorted((ROOT / "benchmarks").glob("*.py")):
        for imp in imports_of(f"benchmarks.{path.stem}", path):
            if _within(imp.target, "shoplens"):
                bad += [f"{imp.where}: {imp.target}.{n} is private" for n in imp.names if n.startswith("_")]
    return bad


def test_every_mapped_folder_is_walked() -> None:
    mods = modules()
    for pkg in package_dirs():
        assert pkg in mods, f"{pkg} has no __init__.py"
    assert "shoplens.cli" in mods and "shoplens.contract.schemas" in mods


def test_layers() -> None:
    bad = violations(all_imports())
    assert not bad, "layering broken:\n" + "\n".join(bad)


def test_benchmarks_import_public_names_only() -> None:
    bad = benchmark_private_imports()
    assert not bad, "\n".join(bad)


def test_composition_roots_exist() -> None:
    """The exception list names real modules (a renamed root CLI must not silently widen the rule)."""
    assert COMPOSITION_ROOTS <= set(modules())


@pytest.mark.parametrize(
    ("module", "code", "rule"),
    [
        ("shoplens.sdk.x", "from shoplens.cloud.store import CatalogStore", "sdk must not import the cloud"),
        ("shoplens.cloud.x", "def f():\n    from shoplens.sdk import importer", "cloud must not import the sdk"),
        ("shoplens.cloud.x", "from ..sdk.catalog import read_catalog", "cloud must not import the sdk"),
        ("shoplens.doctor", "import shoplens.cloud.app", "the core must not import"),
        ("shoplens.contract.x", "from shoplens.demo import run", "the core must not import"),
        ("shoplens.converters.detector.x", "import importlib\nimportlib.import_module('shoplens.cloud.app')", "converters must not import the cloud"),
        ("shoplens.sdk.cli", "from shoplens.cli import manifest_app", "only `python -m shoplens`"),
    ],
)
def test_rules_catch(module: str, code: str, rule: str) -> None:
    """The checker itself: each rule fires on a small example of what it forbids."""
    found = violations(parse_imports(module, code, "probe.py"))
    assert any(rule in v for v in found), found


def test_root_cli_may_compose() -> None:
    assert not violations([Import("shoplens.cli", "shoplens.cloud.cli", ("app",), "shoplens/cli.py:1")])


def test_commands_get_the_other_side_only_from_the_root_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run outside the root CLI (no ``ctx.obj``), the sdk's and the cloud's commands say what they
    cannot do instead of importing the other package; under it, the root hands both over."""
    from types import SimpleNamespace

    import typer
    from typer.testing import CliRunner

    from shoplens.cli import Composition, _embed_catalog, _milvus_sink
    from shoplens.cloud.cli import app as cloud_app
    from shoplens.sdk.cli import _make_sink

    with pytest.raises(typer.BadParameter, match="--server"):
        _make_sink(SimpleNamespace(obj=None), None, None, "m")  # type: ignore[arg-type]
    monkeypatch.setattr("shoplens.cloud.reindex.model_id_from_bundle", lambda bundle: "m")
    rows = CliRunner().invoke(cloud_app, ["reindex", "--catalog", "c.csv", "--bundle", "b"], env={"COLUMNS": "200"})
    assert rows.exit_code == 2 and "cannot embed a catalog" in rows.output, rows.output
    assert Composition().direct_sink is _milvus_sink and Composition().embed_catalog is _embed_catalog
