"""bot/'s seams stay typed: no ``Any`` in a function's parameters or return, a class's fields (a
TypedDict's keys, a dataclass's constructor) or a module-level type alias. Slack payloads are the
TypedDicts of ``bot.payloads`` (or ``Mapping[str, object]`` read with ``payloads.text_at``); Block
Kit is ``payloads.Blocks``. mypy --strict accepts ``Any`` silently, so this reads the source."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

BOT = Path(__file__).resolve().parent.parent / "bot"

ALLOWED: dict[str, str] = {}
"""``"path:line"`` -> why ``Any`` is right there. Deliberately empty."""


def _mentions_any(annotation: ast.expr | None) -> bool:
    if annotation is None:
        return False
    for node in ast.walk(annotation):
        if isinstance(node, ast.Name) and node.id == "Any":
            return True
        if isinstance(node, ast.Attribute) and node.attr == "Any":
            return True
        if isinstance(node, ast.Constant) and isinstance(node.value, str):  # a quoted annotation
            try:
                quoted = ast.parse(node.value, mode="eval").body
            except SyntaxError:
                continue
            if _mentions_any(quoted):
                return True
    return False


def _typed_places(tree: ast.Module) -> Iterator[tuple[int, ast.expr | None]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            a = node.args
            for arg in [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg]:
                if arg is not None:
                    yield arg.lineno, arg.annotation
            yield node.lineno, node.returns
        elif isinstance(node, ast.ClassDef):
            yield from ((s.lineno, s.annotation) for s in node.body if isinstance(s, ast.AnnAssign))
    for stmt in tree.body:  # module level: aliases (``X = dict[str, Any]``, ``X: TypeAlias = ...``)
        if isinstance(stmt, ast.AnnAssign):
            yield stmt.lineno, stmt.annotation
            yield stmt.lineno, stmt.value
        elif isinstance(stmt, ast.Assign):
            yield stmt.lineno, stmt.value


def any_in_signatures(root: Path) -> list[str]:
    found: list[str] = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        lines = sorted({line for line, annotation in _typed_places(tree) if _mentions_any(annotation)})
        found.extend(f"{path.relative_to(root.parent)}:{line}" for line in lines)
    return [where for where in found if where not in ALLOWED]


def test_no_any_in_bot_signatures() -> None:
    assert any_in_signatures(BOT) == []


def test_the_check_sees_each_kind_of_place(tmp_path: Path) -> None:
    pkg = tmp_path / "bot"
    pkg.mkdir()
    (pkg / "m.py").write_text(
        "from typing import Any, TypeAlias\n"
        "import typing\n"
        "Payload: TypeAlias = dict[str, Any]\n"
        "Blocks = list[typing.Any]\n"
        "def f(body: 'dict[str, Any]') -> None: ...\n"
        "def g(*args: int, **kwargs: Any) -> int: ...\n"
        "def h() -> typing.Any: ...\n"
        "class T:\n"
        "    field: list[Any]\n"
        "def ok(body: dict[str, object]) -> None:\n"
        "    local: Any = body\n"
    )
    assert any_in_signatures(pkg) == [f"bot/m.py:{n}" for n in (3, 4, 5, 6, 7, 9)]
