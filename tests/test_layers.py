"""The layers: imports go one way, from the process shells (``service``: receiver and command
line; ``workers``: Celery tasks) down to the core (``labelloop``), with no cycle anywhere.

Imports are read from the source (``ast``), inside functions too; ``if TYPE_CHECKING:`` blocks
do not count. The same check from the command line: ``python tests/test_layers.py``.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("labelloop", "service", "workers")
# What each layer may import of the others, and third-party modules the core must not know.
ALLOWED = {"labelloop": set(), "workers": {"labelloop"}, "service": {"labelloop", "workers"}}
CORE_FORBIDDEN = ("starlette", "uvicorn", "celery", "kombu", "flower")
# The core's rooms, bottom first: a room imports only rooms below it and the core's top modules
# (paths, errors, keys, names, logconfig, manifest, files, ...), which import no room.
CORE_ROOMS = (
    "settings",  # Settings, composed of its field groups (LABELLOOP_*): read by the rooms' composition roots
    "task_types",  # Ultralytics task types, label configs, region conversions
    "events",  # what Label Studio told labelloop: change log, ledger, webhook health
    "registry",  # versions on disk, CURRENT, gate, exports, per-project params
    "labelstudio",  # the SDK client, media, export, tabs, sampling
    "dataset",  # Ultralytics datasets from annotations
    "training",  # recipe, the training child process, threshold
    "serving",  # /predict, pre-annotation, task order
    "quality",  # label mistakes
    "jobs",  # what the Celery tasks do; the training run's lifecycle
    "dev",  # demo, local stack, generated data
)


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


class _RuntimeVisitor(ast.NodeVisitor):
    """Visits what runs: the body of an ``if TYPE_CHECKING:`` is skipped (its ``else`` visited)."""

    def visit_If(self, node: ast.If) -> None:
        if "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)


def _imports(path: Path, module: str) -> set[str]:
    """Every module name ``path`` imports (absolute, as written or resolved from relative)."""
    names: set[str] = set()

    class Visitor(_RuntimeVisitor):
        def visit_Import(self, node: ast.Import) -> None:
            names.update(a.name for a in node.names)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            base = node.module or ""
            if node.level:
                here = module.split(".")[: -node.level] if path.name != "__init__.py" else module.split(".")
                base = ".".join([*here, base] if base else here)
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)

    Visitor().visit(ast.parse(path.read_text()))
    return names


def _graph() -> dict[str, set[str]]:
    modules = _modules()

    def resolve(name: str) -> str | None:
        while name:
            if name in modules:
                return name
            name = name.rpartition(".")[0]
        return None

    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets = {resolve(n) for n in _imports(path, module)}
        graph[module] = {t for t in targets if t and t != module}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _package(module: str, packages: set[str]) -> str:
    """The (sub)package a module belongs to: ``labelloop.task_types.detect`` -> ``labelloop.task_types``,
    ``labelloop.task_types.convert`` -> ``labelloop``."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in packages:
            return ".".join(parts[:n])
    return parts[0]


def _room(module: str) -> int:
    """A core module's room, as its rank in ``CORE_ROOMS`` (-1: the core's top modules)."""
    parts = module.split(".")
    return CORE_ROOMS.index(parts[1]) if len(parts) > 2 or (len(parts) == 2 and parts[1] in CORE_ROOMS) else -1


def _room_problems(graph: dict[str, set[str]]) -> list[str]:
    """Imports from a lower room (or the top modules) up into a higher room of the core."""
    out = []
    for module, targets in sorted(graph.items()):
        if module.startswith("labelloop"):
            for target in sorted(t for t in targets if t.startswith("labelloop.")):
                if _room(target) > _room(module):
                    where = CORE_ROOMS[_room(module)] if _room(module) >= 0 else "the top modules"
                    out.append(f"{module} imports {target}: {where} is below {CORE_ROOMS[_room(target)]}")
    return out


def problems() -> list[str]:
    """Every upward or sideways import between layers, every core import of a process framework,
    and every import cycle between modules or between (sub)packages, as readable lines (empty:
    the layers hold)."""
    graph = _graph()
    out = [f"import cycle: {' -> '.join(c)}" for c in _cycles(graph)]
    packages = {m for m, path in _modules().items() if path.name == "__init__.py"}
    by_package: dict[str, set[str]] = {}
    for module, targets in graph.items():
        here = _package(module, packages)
        by_package.setdefault(here, set()).update(p for p in (_package(t, packages) for t in targets) if p != here)
    out += [f"package cycle: {' <-> '.join(c)}" for c in _cycles(by_package)]
    for module, targets in sorted(graph.items()):
        layer = module.split(".")[0]
        for target in sorted(targets):
            other = target.split(".")[0]
            if other != layer and other not in ALLOWED[layer]:
                out.append(f"{module} imports {target}: {layer} may import only {sorted(ALLOWED[layer]) or 'itself'}")
    out += _room_problems(graph)
    for module, path in sorted(_modules().items()):
        if module.startswith("labelloop"):
            for name in sorted(_imports(path, module)):
                if name.split(".")[0] in CORE_FORBIDDEN:
                    out.append(f"{module} imports {name}: the core knows neither Starlette nor Celery")
    return out


def test_imports_go_one_way_without_cycles() -> None:
    """No module cycle, no import from the core up into the shells, none between the shells but
    the command line's of the Celery app, and no web or task framework in the core."""
    assert problems() == []


MAX_FUNCTION_LINES = 80


def long_functions() -> list[str]:
    """Functions of the shipped packages over ``MAX_FUNCTION_LINES`` lines (docstring included)
    whose docstring does not say why ("Long because ..." or "Long for ...")."""
    out = []
    for module, path in sorted(_modules().items()):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                doc = ast.get_docstring(node) or ""
                if length > MAX_FUNCTION_LINES and "Long because" not in doc and "Long for" not in doc:
                    out.append(f"{module}.{node.name}: {length} lines")
    return out


def test_long_functions_say_why() -> None:
    """No function of labelloop, service or workers is over 80 lines without a reason in its docstring."""
    assert long_functions() == []


def test_the_check_finds_a_cycle_and_an_upward_import() -> None:
    """The checker itself fails on a cycle and on a core module importing a shell."""
    graph = {"labelloop.a": {"labelloop.b"}, "labelloop.b": {"labelloop.a"}, "service.x": set()}
    assert _cycles(graph) == [["labelloop.a", "labelloop.b"]]
    assert "workers" not in ALLOWED["labelloop"] and "service" not in ALLOWED["workers"]
    upward = {
        "labelloop.registry.store": {"labelloop.serving.predictor"},
        "labelloop.settings": {"labelloop.dev.stack"},
    }
    assert len(_room_problems(upward)) == 2


def test_every_core_module_lives_in_a_room() -> None:
    """The core's top folder keeps only the shared modules (at most 12); every sub-package is a room."""
    top = sorted(p.name for p in (ROOT / "labelloop").glob("*.py"))
    rooms = sorted(p.name for p in (ROOT / "labelloop").iterdir() if (p / "__init__.py").exists())
    assert len(top) <= 12, top
    assert rooms == sorted(CORE_ROOMS), rooms


# The composition roots: the only core modules (or, ``module:function``, factories) that take ``Settings``
# (import it outside ``if TYPE_CHECKING:``, or have a parameter annotated with it). The rest of the core
# takes collaborators: ``Paths``, a Label Studio ``Connection``, ``MediaConfig``, ``DatasetSource``,
# ``PseudoSource``, ``ParamDefaults``, a Redis client (``labelloop.redis_client``), plain values.
SETTINGS_ROOTS = {
    "labelloop.settings": "defines Settings from its field groups (re-exports Paths)",
    "labelloop.jobs.jobs": "Jobs: what the Celery tasks call, made from the worker's Settings",
    "labelloop.jobs.context": "JobContext: one job's Settings, Redis client and registry",
    "labelloop.jobs.lifecycle": "a training run's lifecycle, from the worker's Settings",
    "labelloop.jobs.pipeline": "the training pipeline: builds the dataset room's sources from Settings",
    "labelloop.jobs.gate": "the promotion gate and publish, thresholds from Settings",
    "labelloop.jobs.plan": "the training plan: recipe defaults and folders from Settings",
    "labelloop.jobs.preannotation": "pre-annotation jobs, limits from Settings",
    "labelloop.jobs.prediction": "the predictors of a worker, from Settings",
    "labelloop.jobs.datasets": "DatasetSource and PseudoSource from Settings",
    "labelloop.dev.demo": "the demo, a process entry point reading Settings from the environment",
    "labelloop.labelstudio.media_types:MediaConfig.from_settings": "MediaConfig from LABELLOOP_MEDIA_*",
    "labelloop.labelstudio.video_media:video_config": "the video MediaConfig from LABELLOOP_MEDIA_VIDEO_*",
    "labelloop.serving.video:VideoOptions.from_settings": "VideoOptions from LABELLOOP_VIDEO_*",
}


def settings_takers(source: str, module: str) -> set[str]:
    """Where ``source`` takes ``Settings``: ``module`` when it imports it from ``labelloop.settings``
    outside ``if TYPE_CHECKING:`` (inside functions too), ``module:Qualname`` for each function with a
    parameter annotated with it (``Settings``, ``Settings | None``, ``"Settings"``...)."""
    found: set[str] = set()

    class Visitor(_RuntimeVisitor):
        def __init__(self) -> None:
            self.scope: list[str] = []

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.module == "labelloop.settings" and any(a.name == "Settings" for a in node.names):
                found.add(module)

        def visit_ClassDef(self, node: ast.ClassDef) -> None:
            self.scope.append(node.name)
            self.generic_visit(node)
            self.scope.pop()

        def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
            self.scope.append(node.name)
            args = node.args
            for arg in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]:
                if arg is not None and arg.annotation is not None:
                    words = ast.unparse(arg.annotation).replace("'", " ").replace('"', " ").replace("|", " ").split()
                    if "Settings" in words or "labelloop.settings.Settings" in words:
                        found.add(f"{module}:{'.'.join(self.scope)}")
            self.generic_visit(node)
            self.scope.pop()

        visit_AsyncFunctionDef = visit_FunctionDef

    Visitor().visit(ast.parse(source))
    return found


def settings_outside_roots() -> list[str]:
    """Core modules and functions that take ``Settings`` but are not in ``SETTINGS_ROOTS``."""
    out = []
    for module, path in sorted(_modules().items()):
        if module.startswith("labelloop"):
            for taker in sorted(settings_takers(path.read_text(), module)):
                if taker not in SETTINGS_ROOTS and taker.split(":")[0] not in SETTINGS_ROOTS:
                    out.append(taker)
    return out


def test_only_the_composition_roots_take_settings() -> None:
    """Only the roots in ``SETTINGS_ROOTS`` import ``Settings`` or take it as a parameter; every root
    listed still exists (a stale entry would hide nothing but mislead)."""
    assert settings_outside_roots() == []
    modules = _modules()
    for root in SETTINGS_ROOTS:
        assert root.split(":")[0] in modules, root


def test_the_settings_check_finds_an_import_and_a_parameter() -> None:
    """The checker sees a runtime import, a parameter in a method, and not a TYPE_CHECKING import."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from labelloop.settings import Settings\n"
        "class A:\n    def f(self, s: Settings | None) -> None:\n        from labelloop.settings import Settings\n"
        "def g(x: int, *, cfg: 'Settings') -> None: ...\n"
        "def h(paths: Paths) -> None: ...\n"
    )
    assert settings_takers(source, "labelloop.x") == {"labelloop.x", "labelloop.x:A.f", "labelloop.x:g"}
    assert settings_takers(source.split("class A")[0], "labelloop.x") == set()


if __name__ == "__main__":
    lines = problems() + [f"takes Settings outside the roots: {t}" for t in settings_outside_roots()]
    print("\n".join(lines) or "layers hold: no cycle, no upward import")
    sys.exit(1 if lines else 0)
