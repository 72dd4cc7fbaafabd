"""Read an nf-core module's ``main.nf`` and render its ``script:``/``stub:`` blocks as Nextflow would, offline.

Nextflow cannot run here (it downloads itself and its plugins), so this covers the Groovy the modules in
``nextflow/`` use: ``def name = expr`` statements, ``if (a == b) error "..."`` guards, the elvis operator
``a ?: b``, property paths (``task.ext.args``, ``meta.id``), single-quoted strings and GStrings with ``${expr}``
and ``$name``, and the block's closing triple-quoted string with Groovy's escapes (``\\\\`` → ``\\``,
``\\$`` → ``$``, ``\\"`` → ``"``). Anything else raises, so that a module using more fails here instead of being
rendered wrongly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Module", "ModuleError", "parse_module", "render_block"]


class ModuleError(Exception):
    """``error "..."`` in a block (Nextflow stops the task with this message)."""


@dataclass
class Module:
    """The parts of a ``main.nf`` process."""

    name: str
    directives: dict[str, str]
    inputs: list[str]
    outputs: list[str]
    blocks: dict[str, str]


_SECTION = re.compile(r"^\s*(input|output|when|script|stub):\s*$")


def parse_module(path: Path) -> Module:
    """Split ``main.nf`` into directives, input and output declarations, and the ``script``/``stub`` blocks."""
    text = path.read_text()
    match = re.match(r"\s*process\s+(\w+)\s*\{\n(.*)\}\s*$", text, re.S)
    if match is None:
        raise ValueError(f"{path}: not a single process")
    name, body = match.groups()
    sections: dict[str, list[str]] = {"directives": []}
    current = "directives"
    for line in body.splitlines():
        found = _SECTION.match(line)
        if found:
            current = found.group(1)
            sections[current] = []
        else:
            sections[current].append(line)
    directives = {}
    for line in "\n".join(sections["directives"]).split("\n"):
        m = re.match(r"^\s*(tag|label|conda|container)\s+(.*)$", line)
        if m:
            directives[m.group(1)] = m.group(2)
    clean = lambda lines: [ln.strip() for ln in lines if ln.strip()]  # noqa: E731
    return Module(name, directives, clean(sections["input"]), clean(sections["output"]),
                  {k: "\n".join(sections[k]) for k in ("script", "stub") if k in sections})


# --- expressions ---------------------------------------------------------------------------------------------------
def _lookup(path: str, context: dict):
    value = context
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else getattr(value, part, None)
    return value


def _expression(expr: str, context: dict):
    expr = expr.strip()
    if "?:" in expr:
        left, right = expr.split("?:", 1)
        value = _expression(left, context)
        return value if value else _expression(right, context)
    if len(expr) >= 2 and expr[0] == expr[-1] == "'":
        return expr[1:-1]
    if len(expr) >= 2 and expr[0] == expr[-1] == '"':
        return _gstring(expr[1:-1], context)
    if re.fullmatch(r"[A-Za-z_][\w.]*", expr):
        return _lookup(expr, context)
    raise ValueError(f"Groovy expression not rendered here: {expr}")


def _gstring(text: str, context: dict) -> str:
    def replace(match):
        if match.group(1) is not None:
            return _text(_expression(match.group(1), context))
        return _text(_lookup(match.group(2), context))

    return re.sub(r"(?<!\\)\$\{([^}]*)\}|(?<!\\)\$([A-Za-z_][\w.]*[\w])", replace, text)


def _text(value) -> str:
    return "" if value is None else str(value)


def _unescape(text: str) -> str:
    return re.sub(r"\\([\\$\"])", r"\1", text)


def render_block(block: str, context: dict) -> str:
    """The shell script of a ``script:``/``stub:`` block, with ``context`` (``task``, ``meta``, the inputs)."""
    scope = dict(context)
    quote = block.index('"""')
    for line in block[:quote].splitlines():
        line = line.strip()
        if not line:
            continue
        m = re.fullmatch(r"def\s+(\w+)\s*=\s*(.+)", line)
        if m:
            scope[m.group(1)] = _expression(m.group(2), scope)
            continue
        m = re.fullmatch(r'if\s*\((.+?)\s*==\s*(.+?)\)\s*error\s+"(.*)"', line)
        if m:
            if _expression(m.group(1), scope) == _expression(m.group(2), scope):
                raise ModuleError(_unescape(_gstring(m.group(3), scope)))
            continue
        raise ValueError(f"Groovy statement not rendered here: {line}")
    end = block.rindex('"""')
    script = _unescape(_gstring(block[quote + 3 : end], scope))
    lines = script.splitlines()
    indent = min((len(ln) - len(ln.lstrip()) for ln in lines if ln.strip()), default=0)
    return "\n".join(ln[indent:] for ln in lines).strip() + "\n"
