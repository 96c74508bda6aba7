"""The package's seams: imports only point down (no circle), nothing above the backends asks a
backend or a split what it is with hasattr, every library fact comes from the one table, and
a run's settings are checked once."""

from __future__ import annotations

import ast
import dataclasses
import re
import sys
from pathlib import Path

import pytest

from mnist_xp import PRESETS, Config, train
from mnist_xp.backends import CHOICES, LIBRARIES, check_pair, numpy_backend
from mnist_xp.cli import build_parser, main
from mnist_xp.config import flag
from mnist_xp.errors import BackendError, UsageError
from mnist_xp.settings import CHUNK_SIZE_DEFAULT, RunSettings, check_run

PACKAGE = Path(__file__).resolve().parents[1] / "mnist_xp"


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """module -> the package's modules it imports (at any depth of its code)."""
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                target = (f"{base}.{node.module}" if node.module else base) if node.level \
                    else node.module or ""
                for alias in node.names:
                    full = f"{target}.{alias.name}"
                    found = full if full in modules else target
                    if found in modules and found != name:
                        graph[name].add(found)
            elif isinstance(node, ast.Import):
                graph[name].update(a.name for a in node.names if a.name in modules)
    return graph


def test_no_import_circle():
    graph = _imports()
    state: dict[str, int] = {}
    circle: list[str] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                circle.extend(path[path.index(nxt):] + [node, nxt] if nxt in path else
                              [node, nxt])
            elif nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for module in graph:
        if module not in state:
            visit(module, [])
    assert not circle, f"import circle through {circle}"


def _floors() -> dict[str, int]:
    """module -> its floor as docs/architecture.md lists it (0: an I/O room)."""
    text = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    floors: dict[str, int] = {}
    for block in re.findall(r"```text\n(.*?)```", text, re.S):
        floor, folder = 0, None  # (indent, name) of the folder being listed
        for line in block.splitlines():
            if match := re.match(r"floor (\d)", line):
                floor, folder = int(match[1]), None
            elif match := re.match(r"( +)(\w+)(\.py|/)(\s|$)", line):
                indent, name = len(match[1]), match[2]
                if folder and indent > folder[0]:
                    name = f"{folder[1]}.{name}"
                elif match[3] == "/":
                    folder = (indent, name)
                else:
                    folder = None
                floors[f"mnist_xp.{name}".removesuffix(".__init__")] = floor
    return floors


def test_imports_point_down_the_floors_that_architecture_md_lists():
    graph, floors = _imports(), _floors()
    assert set(graph) - set(floors) == {"mnist_xp", "mnist_xp.__main__"}, "not listed"
    assert set(floors) <= set(graph), "listed, but no such module"
    for module, imported in graph.items():
        for target in imported:
            if module in floors and target in floors:
                here, there = floors[module], floors[target]
                # a floor uses its own and those below; a room, the math and the libraries
                assert there <= (here if here else 2), f"{module} imports {target}"


def test_nothing_above_the_backends_asks_with_hasattr():
    for path in PACKAGE.rglob("*.py"):
        if "backends" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "hasattr":
                asked = ast.unparse(node.args[0])
                assert asked == "os", f"{path.name}: hasattr({asked}, ...)"


def test_every_pair_comes_from_the_library_table(capsys):
    assert set(build_parser()._subparsers._group_actions[0].choices["train"]._option_string_actions[
        "--backend"].choices) == {"auto", *CHOICES}
    for library in CHOICES:
        for kind in ("cpu", "cuda"):
            if kind in LIBRARIES[library].devices:
                assert check_pair(kind, library)[2] == library
            else:
                with pytest.raises(BackendError, match=LIBRARIES[library].why_not[kind][:20]):
                    check_pair(kind, library)


def test_the_train_flags_are_the_config_fields(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for field in dataclasses.fields(Config):
        assert flag(field.name) in text, field.name


def test_the_synopsis_of_command_line_md_names_every_flag():
    """README sends readers to docs/command-line.md for "every command and flag"."""
    text = (PACKAGE.parent / "docs" / "command-line.md").read_text()
    block = re.search(r"```text\n(mnist-xp train .*?)```", text, re.S)[1]
    parts = re.split(r"^mnist-xp (\w+)", block, flags=re.M)[1:]
    synopsis = dict(zip(parts[::2], parts[1::2]))
    commands = build_parser()._subparsers._group_actions[0].choices
    assert set(synopsis) == set(commands)
    for name, parser in commands.items():
        for action in parser._actions:
            for option in set(action.option_strings) - {"-h", "--help"}:
                assert re.search(re.escape(option) + r"(?![\w-])", synopsis[name]), \
                    f"mnist-xp {name} {option}"


def test_the_chunk_size_help_gives_each_engines_default(capsys):
    from mnist_xp.backends.dask import DaskBackend
    from mnist_xp.backends.jax import JaxBackend
    from mnist_xp.cluster.engine import CHUNKS_PER_WORKER

    cpu = numpy_backend().default_chunk_rows
    dask_rows, jax_rows = (b.default_chunk_rows.fget(None) for b in (DaskBackend, JaxBackend))
    assert jax_rows is None  # one pass
    said = (f"{cpu} on a CPU; one pass on a GPU and with JAX; {dask_rows:,} with Dask; on a "
            f"cluster, {CHUNKS_PER_WORKER} chunks a worker")
    assert said == CHUNK_SIZE_DEFAULT
    for command in ("train", "bench"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert " ".join(capsys.readouterr().out.split()).count(CHUNK_SIZE_DEFAULT) == 1


def test_train_uses_the_settings_it_is_given(tiny_data, monkeypatch):
    """Checked once: given a RunSettings (as the command line passes it), train() runs it
    without checking again; the same arguments through train() give the same settings."""
    settings = check_run("relu10", {"steps": 4}, train_rows=lambda _: 240, eval_every=2)
    assert settings == RunSettings(PRESETS["relu10"].replace(steps=4), "mnist", 4, 2,
                                   checkpoint_every=2)

    def refuse(*args, **kwargs):
        raise AssertionError("checked twice")

    monkeypatch.setattr(sys.modules["mnist_xp.train"], "check_run", refuse)
    model, history = train(tiny_data, numpy_backend(), settings=settings)
    assert history.steps == 4 and [r["step"] for r in history.records] == [2, 4]


def test_by_default_a_run_evaluates_ten_times_but_at_most_once_an_epoch():
    def every(given):
        return check_run("best", given, train_rows=lambda _: 1000).eval_every

    assert every({"steps": 150}) == 15  # full batch: a step is an epoch
    assert every({"steps": 5}) == 1
    assert every({"batch_size": 100, "epochs": 20}) == 20  # 200 steps, 10 an epoch
    assert every({"batch_size": 100, "epochs": 3}) == 10  # not 3: once an epoch
    assert every({"batch_size": 100, "steps": 4}) == 10  # only at the end
    assert every({"batch_size": 100, "epochs": 3, "augment": 2}) == 20  # 2000 rows an epoch
    assert check_run("best", {"batch_size": 100, "epochs": 3, "augment": 2},
                     train_rows=lambda _: 1000).total_steps == 60  # E·⌈rows·K/N⌉
    assert every({"batch_size": 300, "epochs": 2}) == 4  # the last batch is a short one


def test_the_gate_refuses_before_any_data(tiny_data):
    with pytest.raises(UsageError, match="--eval-every 0: must be at least 1"):
        check_run("best", {}, train_rows=lambda _: pytest.fail("data read"), eval_every=0)
    with pytest.raises(UsageError, match="--checkpoint-every needs --checkpoint"):
        check_run("best", {}, train_rows=lambda _: pytest.fail("data read"), checkpoint_every=3)
