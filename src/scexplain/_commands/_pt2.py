"""Check a ``torch.export`` archive (``.pt2``) before :func:`torch.export.load` reads it.

``torch.export.load`` is not safe on a file from anyone. Reading the torch 2.13 sources (and trying it):

* payloads marked ``use_pickle`` (tensor subclasses), legacy weight/constant files and opaque objects are
  unpickled with ``weights_only=False``; TorchScript objects go through ``torch._C._pickle_load_obj``; the sample
  inputs are unpickled with ``weights_only=True`` and, when that fails, again with ``weights_only=False``;
* an AOTInductor package (``data/aotinductor/``) loads a compiled shared library;
* symbolic shapes are strings given to :func:`sympy.sympify`, which evaluates them with ``eval``;
* ``guards_code`` strings are pasted into Python source that ``ep.module()`` runs with ``exec``, and so are the
  input names; node targets are resolved by ``getattr`` anywhere under ``torch``, ``operator`` and ``math``
  (``torch.os.system`` included) and called when the graph runs.

So a program is accepted only if it stays within a subset with none of these: no pickled or compiled payload,
sample inputs that load with ``weights_only=True``, expressions and guards made of numbers, symbols and a fixed set
of functions only, identifier names, and graph nodes that call ATen operators (not ``aten::save`` or
``aten::from_file``) or Python's arithmetic operators. :func:`pt2_problems` lists what falls outside; the loader
refuses such a file unless the user passes ``--allow-pickle``.
"""

from __future__ import annotations

import ast
import io
import json
import math
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["is_pt2", "pt2_problems"]

#: files a plain ``torch.export.save`` archive holds, below its root folder
_FILES = re.compile(
    r"^(archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id|models/[^/]+\.json|"
    r"data/weights/[^/]+|data/constants/[^/]+|data/sample_inputs/[^/]+\.pt|extra/[^/]+)$"
)
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FQN = re.compile(r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$")
#: functions a symbolic-shape expression may call (torch.utils._sympy.functions and sympy's own)
_SYMPY_FUNCTIONS = frozenset(
    """Symbol Integer Float Rational Max Min Abs Eq Ne Lt Le Gt Ge StrictLessThan StrictGreaterThan LessThan
    GreaterThan And Or Not Mul Add Pow Mod floor ceiling sqrt oo zoo nan true false FloorDiv ModularIndexing Where
    PythonMod CleanDiv CeilToInt FloorToInt CeilDiv LShift RShift PowByNatural FloatPow FloatTrueDiv IntTrueDiv
    IsNonOverlappingAndDenseIndicator TruncToFloat TruncToInt RoundToInt RoundDecimal ToFloat Identity BitwiseFn_bitwise_and
    BitwiseFn_bitwise_or OpaqueUnaryFn_sqrt OpaqueUnaryFn_exp OpaqueUnaryFn_log""".split()
)
#: keyword arguments of ``Symbol(...)``
_SYMBOL_FLAGS = frozenset("positive negative nonnegative nonpositive integer real finite".split())
#: tensor methods a guard may call (without arguments)
_GUARD_METHODS = frozenset({"size", "stride", "storage_offset", "dim", "numel"})
_GUARD_FUNCTIONS = frozenset({"max", "min", "abs", "int", "float", "bool"})
#: Python operators a graph may call (shape arithmetic and tuple indexing)
_OPERATORS = frozenset(
    "getitem add sub mul truediv floordiv mod pow neg pos abs eq ne lt le gt ge and_ or_ xor not_ invert".split()
)
#: torch-level functions of symbolic sizes a graph may call
_TORCH_FUNCTIONS = frozenset(
    "sym_float sym_int sym_max sym_min sym_not sym_ite sym_sqrt sym_sum _check _check_is_size".split()
)
#: ATen operators that touch files
_FORBIDDEN_OPS = frozenset({"save", "from_file"})
#: argument kinds that smuggle graphs, objects or operators into a node
_FORBIDDEN_ARGUMENTS = frozenset({"as_graph", "as_custom_obj", "as_operator"})


def is_pt2(path: str | Path) -> bool:
    """Whether ``path`` is a ``torch.export`` archive (a zip holding ``archive_format`` = ``pt2``)."""
    try:
        with zipfile.ZipFile(path) as archive:
            root = _root(archive)
            return root is not None and archive.read(f"{root}archive_format").strip() == b"pt2"
    except (zipfile.BadZipFile, KeyError, OSError):
        return False


def _root(archive: zipfile.ZipFile) -> str | None:
    """The single top-level folder of the archive (``"name/"``), or ``None``."""
    roots = {n.split("/", 1)[0] for n in archive.namelist()}
    return f"{roots.pop()}/" if len(roots) == 1 else None


def pt2_problems(path: str | Path, *, limit: int = 3) -> list[str]:
    """What in the archive at ``path`` could run code on loading or running it (empty: nothing).

    At most ``limit`` problems are listed.
    """
    found: list[str] = []
    for problem in _problems(Path(path)):
        if problem not in found:
            found.append(problem)
        if len(found) >= limit:
            break
    return found


def _problems(path: Path) -> Iterator[str]:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        yield f"not a torch.export archive ({err})"
        return
    with archive:
        root = _root(archive)
        if root is None:
            yield "not a torch.export archive (no single root folder)"
            return
        names = [n[len(root):] for n in archive.namelist() if not n.endswith("/")]
        for name in names:
            if not _FILES.match(name):
                what = "a compiled AOTInductor library" if name.startswith("data/aotinductor/") else "a file"
                yield f"{what} outside a plain torch.export.save archive ({name})"
        models = [n for n in names if n.startswith("models/")]
        if not models:
            yield "no exported program in the archive (legacy format: save it again with torch.export.save)"
        for name in models:
            model = Path(name).stem
            yield from _payloads(archive, root, names, model)
            try:
                program = json.loads(archive.read(root + name))
            except (ValueError, UnicodeDecodeError) as err:
                yield f"{name} is not valid JSON ({err})"
                continue
            yield from _program(program)


def _payloads(archive: zipfile.ZipFile, root: str, names: list[str], model: str) -> Iterator[str]:
    """Pickled weights or constants, objects, and sample inputs that need more than ``weights_only=True``."""
    for kind in ("weights", "constants"):
        if f"data/{kind}/{model}.pt" in names:
            yield f"pickled {kind} in the legacy format (data/{kind}/{model}.pt)"
        config_name = f"data/{kind}/{model}_{kind}_config.json"
        if config_name not in names:
            continue
        try:
            config = json.loads(archive.read(root + config_name)).get("config", {})
        except (ValueError, AttributeError) as err:
            yield f"{config_name} is not valid JSON ({err})"
            continue
        for fqn, meta in config.items():
            if not _FQN.match(str(fqn)):
                yield f"a {kind[:-1]} with an unusual name ({fqn!r})"
            if not isinstance(meta, dict) or meta.get("use_pickle") or not str(meta.get("path_name", "")).startswith(
                    ("weight_", "tensor_")):
                yield f"a pickled or object {kind[:-1]} ({fqn})"
    sample = f"data/sample_inputs/{model}.pt"
    if sample in names:
        import torch

        try:
            torch.load(io.BytesIO(archive.read(root + sample)), weights_only=True)
        except Exception as err:  # the restricted unpickler refused it: torch would retry without restrictions
            yield f"sample inputs that need full unpickling ({type(err).__name__})"


def _program(program: dict) -> Iterator[str]:
    graph_module = program.get("graph_module", {})
    for guard in program.get("guards_code") or []:
        if not _safe_guard(guard):
            yield f"guard code that is not a plain shape check ({str(guard)[:60]!r})"
    for symbol in program.get("range_constraints", {}):
        if not _IDENTIFIER.match(str(symbol)):
            yield f"a symbol with an unusual name ({str(symbol)[:40]!r})"
    for call in graph_module.get("module_call_graph", []):
        signature = call.get("signature") or {}
        for arg in signature.get("forward_arg_names") or []:
            if not _IDENTIFIER.match(str(arg)):
                yield f"an input with an unusual name ({str(arg)[:40]!r})"
        if call.get("fqn") and not _FQN.match(str(call["fqn"])):
            yield f"a submodule with an unusual name ({str(call['fqn'])[:40]!r})"
    for spec in graph_module.get("signature", {}).get("input_specs", []):
        for kind, value in spec.items():
            if kind in ("custom_obj", "token"):
                yield f"an input of kind {kind}"
            for key in ("parameter_name", "buffer_name", "tensor_constant_name"):
                if isinstance(value, dict) and key in value and not _FQN.match(str(value[key])):
                    yield f"a state entry with an unusual name ({str(value[key])[:40]!r})"
    yield from _walk(graph_module.get("graph", {}))


def _walk(node) -> Iterator[str]:
    """Node targets, argument kinds, names and expressions anywhere in the graph."""
    if isinstance(node, dict):
        if "target" in node and "inputs" in node:
            if not _safe_target(str(node["target"])):
                yield f"a call of {str(node['target'])[:60]}"
        for key, value in node.items():
            if key in _FORBIDDEN_ARGUMENTS and value is not None:
                yield f"a node argument of kind {key}"
            elif key == "expr_str" and not _safe_expression(str(value)):
                yield f"a symbolic expression that is not arithmetic ({str(value)[:60]!r})"
            elif key == "name" and isinstance(value, str) and not _IDENTIFIER.match(value):
                yield f"a value with an unusual name ({value[:40]!r})"
            elif key in ("tensor_values", "sym_int_values", "sym_bool_values", "sym_float_values",
                         "custom_obj_values") and isinstance(value, dict):
                if key == "custom_obj_values" and value:
                    yield "custom objects in the graph"
                for name in value:
                    if not _IDENTIFIER.match(str(name)):
                        yield f"a value with an unusual name ({str(name)[:40]!r})"
            if key != "metadata":  # stack traces and module paths: text torch only stores
                yield from _walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item)


def _safe_target(target: str) -> bool:
    """An ATen operator (not one touching files), a Python operator or a symbolic-size function."""
    parts = target.split(".")
    if parts[0] == "_operator":
        return len(parts) == 2 and parts[1] in _OPERATORS
    if parts[0] == "math":
        return len(parts) == 2 and callable(getattr(math, parts[1], None))
    if parts[:3] == ["torch", "ops", "aten"] and len(parts) == 5:
        import torch

        name, overload = parts[3], parts[4]
        if name.lstrip("_") in _FORBIDDEN_OPS or not _IDENTIFIER.match(name) or not _IDENTIFIER.match(overload):
            return False
        try:
            op = getattr(getattr(torch.ops.aten, name), overload)
        except (AttributeError, RuntimeError):
            return False
        return isinstance(op, torch._ops.OpOverload) and not any(a.name == "filename" for a in op._schema.arguments)
    return len(parts) == 2 and parts[0] == "torch" and parts[1] in _TORCH_FUNCTIONS


def _safe_expression(text: str) -> bool:
    """A sympy expression of numbers, symbols and known functions only (what ``sympify`` may ``eval``)."""
    return _made_of(text, _expression_node)


def _expression_node(node: ast.AST) -> bool | None:
    if isinstance(node, ast.Call):
        return isinstance(node.func, ast.Name) and node.func.id in _SYMPY_FUNCTIONS and all(
            k.arg in _SYMBOL_FLAGS and isinstance(k.value, ast.Constant) for k in node.keywords)
    if isinstance(node, ast.Name):
        return node.id in _SYMPY_FUNCTIONS or bool(re.match(r"^[a-z]+[0-9]+$", node.id))
    return None


def _safe_guard(text: str) -> bool:
    """A shape check: ``L['x'].size()[0] >= 2`` and the like (what ``ep.module()`` pastes into code it runs)."""
    return isinstance(text, str) and not any(c in text for c in "\"\n\\;") and _made_of(text, _guard_node)


def _guard_node(node: ast.AST) -> bool | None:
    if isinstance(node, ast.Call):
        method = isinstance(node.func, ast.Attribute) and node.func.attr in _GUARD_METHODS and not node.args
        function = (isinstance(node.func, ast.Name) and node.func.id in _GUARD_FUNCTIONS) or _math(node.func)
        return not node.keywords and (method or function)
    if isinstance(node, ast.Attribute):
        return node.attr in _GUARD_METHODS or _math(node)
    if isinstance(node, ast.Name):
        return node.id in {"L", "math"} | _GUARD_FUNCTIONS
    if isinstance(node, ast.Subscript):
        index = node.slice
        return isinstance(index, ast.Constant) and (isinstance(index.value, int) or (
            isinstance(index.value, str) and bool(_IDENTIFIER.match(index.value))))
    return None


def _math(node: ast.AST) -> bool:
    """``math.<function>``."""
    return (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "math"
            and callable(getattr(math, node.attr, None)))


def _made_of(text: str, judge) -> bool:
    """Whether ``text`` parses as one expression whose every node ``judge`` accepts.

    ``judge(node)`` returns ``True``/``False``, or ``None`` for the nodes common to both grammars: constants
    (numbers, identifier-like strings) and the syntax of arithmetic and comparisons.
    """
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError):
        return False
    for node in ast.walk(tree):
        verdict = judge(node)
        if verdict is None:
            if isinstance(node, ast.Constant):
                verdict = not isinstance(node.value, str) or bool(_IDENTIFIER.match(node.value))
            else:
                verdict = isinstance(node, _ARITHMETIC)
        if not verdict:
            return False
    return True


#: syntax of arithmetic and comparisons (and the contexts ``ast`` attaches to names)
_ARITHMETIC = (
    ast.Expression, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.operator, ast.unaryop, ast.boolop,
    ast.cmpop, ast.Load, ast.keyword, ast.Tuple,
)
