"""Render a Galaxy tool's test as Galaxy would, offline: macros, parameters, the command's Cheetah template.

A small, faithful subset of what Galaxy does for the tools in ``galaxy/`` (no Galaxy server, no network):

* macros: ``<import>``-ed files, ``<token>`` substitution (``@NAME@``) in text and attributes, ``<expand>`` of
  ``<xml>`` macros with ``<yield/>``;
* parameters: ``data`` (the dataset's path), ``text``/``integer``/``float`` (the value, or the default),
  ``select`` (the value, or the ``selected`` option, or the first), ``boolean`` (``truevalue``/``falsevalue``),
  ``conditional`` (its test parameter and the parameters of the active ``<when>``, reached as ``$cond.name``);
* the template: Cheetah placeholders ``$name``, ``${name}``, ``$a.b`` and ``\\$`` escapes, and directive lines
  ``#if``/``#elif``/``#else``/``#end if`` (expressions evaluated in Python with the parameters); other
  directives are refused, so that a tool using one fails here instead of being rendered wrongly;
* the job: inputs copied to ``dataset_N.dat`` (Galaxy's names), the command run by ``bash`` in a job folder with
  ``GALAXY_SLOTS`` set, outputs collected from ``from_work_dir``;
* assertions: ``has_h5_keys`` (as ``galaxy.tool_util.verify.asserts.hdf5``), ``has_text``, ``not_has_text`` and
  ``has_n_lines`` on outputs, stdout and stderr.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Tool", "ToolTest", "check_assertions", "load_tool", "render_template"]


# --- macros ------------------------------------------------------------------------------------------------------
def _macros(tool_root: ET.Element, folder: Path) -> tuple[dict[str, str], dict[str, ET.Element]]:
    tokens: dict[str, str] = {}
    xmls: dict[str, ET.Element] = {}
    block = tool_root.find("macros")
    sources = [] if block is None else [ET.parse(folder / imp.text.strip()).getroot() for imp in block.findall("import")]
    if block is not None:
        sources.append(block)
    for source in sources:
        for token in source.findall("token"):
            tokens[token.get("name")] = token.text or ""
        for macro in source.findall("xml"):
            xmls[macro.get("name")] = macro
    return tokens, xmls


def _substitute(text: str | None, tokens: dict[str, str]) -> str | None:
    if text is None:
        return None
    for _ in range(10):  # tokens may hold tokens
        new = text
        for name, value in tokens.items():
            new = new.replace(name, value)
        if new == text:
            return new
        text = new
    return text


def _expand(element: ET.Element, tokens: dict[str, str], xmls: dict[str, ET.Element]) -> ET.Element:
    """A copy of ``element`` with every ``<expand>`` replaced by its macro and every token substituted."""
    out = ET.Element(element.tag, {k: _substitute(v, tokens) for k, v in element.attrib.items()})
    out.text, out.tail = _substitute(element.text, tokens), element.tail
    for child in element:
        if child.tag == "expand":
            macro = xmls[child.get("macro")]
            body = [_expand(c, tokens, xmls) for c in macro]
            extra = [_expand(c, tokens, xmls) for c in child]
            for node in body:
                _fill_yield(node, extra)
            out.extend(body)
        elif child.tag != "macros":
            out.append(_expand(child, tokens, xmls))
    return out


def _fill_yield(node: ET.Element, extra: list[ET.Element]) -> None:
    for i, child in enumerate(list(node)):
        if child.tag == "yield":
            node.remove(child)
            for j, e in enumerate(extra):
                node.insert(i + j, copy.deepcopy(e))
        else:
            _fill_yield(child, extra)


# --- parameters ------------------------------------------------------------------------------------------------------
class Namespace(dict):
    """Parameters of a conditional, reached as attributes in templates (``$cond.name``); ``str`` is its value."""

    def __init__(self, value: str, params: dict):
        super().__init__(params)
        self.value = value

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError as err:
            raise AttributeError(name) from err

    def __str__(self):
        return self.value


def _param_value(param: ET.Element, given: dict[str, str], datasets: dict[str, str]):
    name, kind = param.get("name"), param.get("type")
    if kind == "data":
        return datasets[name]
    if kind == "boolean":
        value = given.get(name, param.get("checked", "false"))
        on = str(value).lower() in ("true", "yes", "1")
        return param.get("truevalue", "true") if on else param.get("falsevalue", "false")
    if kind == "select":
        if name in given:
            return given[name]
        options = param.findall("option")
        chosen = [o for o in options if o.get("selected") == "true"] or options
        return chosen[0].get("value")
    if kind in ("text", "integer", "float"):
        return given.get(name, param.get("value", ""))
    raise ValueError(f"parameter type {kind!r} is not rendered here")


def _namespace(inputs: ET.Element, given: dict, datasets: dict) -> dict:
    out = {}
    for child in inputs:
        if child.tag == "param":
            out[child.get("name")] = _param_value(child, given, datasets)
        elif child.tag == "conditional":
            name = child.get("name")
            test_param = child.find("param")
            sub = given.get(name, {})
            value = _param_value(test_param, sub, datasets.get(name, {}))
            when = next(w for w in child.findall("when") if w.get("value") == value)
            params = _namespace(when, sub, datasets.get(name, {}))
            params[test_param.get("name")] = value
            out[name] = Namespace(value, params)
        elif child.tag == "section":
            raise ValueError("sections are not rendered here")
    return out


# --- the template --------------------------------------------------------------------------------------------------
_PLACEHOLDER = re.compile(r"\\\$|\$\{([A-Za-z_][\w.]*)\}|\$([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)")
_DIRECTIVE = re.compile(r"^\s*#(if|elif|else|end if)\b:?\s*(.*?):?\s*$")


def _lookup(path: str, namespace: dict):
    value = namespace
    for part in path.split("."):
        value = value[part] if isinstance(value, dict) and part in value else getattr(value, part)
    return value


def _fill(line: str, namespace: dict) -> str:
    def replace(match):
        if match.group(0) == "\\$":
            return "$"
        return str(_lookup(match.group(1) or match.group(2), namespace))

    return _PLACEHOLDER.sub(replace, line)


def _condition(expr: str, namespace: dict) -> bool:
    code = re.sub(r"\$\{?([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)\}?", lambda m: f"_v({m.group(1)!r})", expr)
    return bool(eval(code, {"__builtins__": {"str": str, "int": int, "float": float}},
                     {"_v": lambda path: _as_value(_lookup(path, namespace))}))


def _as_value(value):
    return str(value) if isinstance(value, Namespace) else value


def render_template(template: str, namespace: dict) -> str:
    """The command line Galaxy would run: the template rendered, its lines joined by spaces."""
    out: list[str] = []
    stack: list[list[bool]] = []  # per open #if: [this branch is active, a branch was taken]
    for line in template.splitlines():
        if line.lstrip().startswith("##"):
            continue
        directive = _DIRECTIVE.match(line)
        active = all(frame[0] for frame in stack)
        if directive:
            kind, expr = directive.groups()
            if kind == "if":
                taken = active and _condition(expr, namespace)
                stack.append([taken, taken])
            elif kind == "elif":
                frame = stack[-1]
                frame[0] = not frame[1] and all(f[0] for f in stack[:-1]) and _condition(expr, namespace)
                frame[1] = frame[1] or frame[0]
            elif kind == "else":
                frame = stack[-1]
                frame[0] = not frame[1]
            else:
                stack.pop()
            continue
        if line.lstrip().startswith("#") and not line.lstrip().startswith("#!"):
            raise ValueError(f"Cheetah directive not rendered here: {line.strip()}")
        if active and line.strip():
            out.append(_fill(line, namespace).strip())
    if stack:
        raise ValueError("unclosed #if")
    return " ".join(out)


# --- tools and their tests ------------------------------------------------------------------------------------------
@dataclass
class ToolTest:
    """One ``<test>``: its parameters, datasets, expected failure and assertions."""

    params: dict
    datasets: dict
    expect_failure: bool
    expect_exit_code: int | None
    outputs: dict[str, ET.Element]
    stdout: ET.Element | None
    stderr: ET.Element | None


@dataclass
class Tool:
    """A tool with its macros expanded."""

    path: Path
    root: ET.Element
    tests: list[ToolTest] = field(default_factory=list)

    @property
    def command(self) -> str:
        return self.root.find("command").text

    def outputs(self) -> dict[str, ET.Element]:
        return {d.get("name"): d for d in self.root.find("outputs").findall("data")}

    def run(self, test: ToolTest, test_data: Path, job: Path, slots: int = 1):
        """Stage the inputs, render and run the command; returns (exit code, stdout, stderr, output paths)."""
        job.mkdir(parents=True, exist_ok=True)
        counter = iter(range(1, 1000))

        def stage(values):
            staged = {}
            for key, value in values.items():
                if isinstance(value, dict):
                    staged[key] = stage(value)
                else:
                    target = job.parent / f"dataset_{next(counter)}_{job.name}.dat"
                    shutil.copyfile(test_data / value, target)
                    staged[key] = str(target)
            return staged

        datasets = stage(test.datasets)
        namespace = _namespace(self.root.find("inputs"), test.params, datasets)
        outputs = {}
        for name, data in self.outputs().items():
            outputs[name] = job / data.get("from_work_dir") if data.get("from_work_dir") else job.parent / (
                f"{name}_{job.name}.dat")
            if not data.get("from_work_dir"):
                namespace[name] = str(outputs[name])
        command = render_template(self.command, namespace)
        env = {"GALAXY_SLOTS": str(slots)}
        import os

        proc = subprocess.run(["bash", "-c", command], cwd=job, capture_output=True, text=True,
                              env={**os.environ, **env})
        return proc.returncode, proc.stdout, proc.stderr, outputs, command


def _test_values(element: ET.Element, inputs: ET.Element) -> tuple[dict, dict]:
    """Parameter values and datasets of a ``<test>`` (or of a ``<conditional>`` in it)."""
    kinds = {p.get("name"): p.get("type") for p in inputs.iter("param")}
    params, datasets = {}, {}
    for child in element:
        if child.tag == "param":
            name = child.get("name")
            if kinds.get(name) == "data":
                datasets[name] = child.get("value")
            else:
                params[name] = child.get("value")
        elif child.tag == "conditional":
            sub_params, sub_data = _test_values(child, inputs)
            params[child.get("name")] = sub_params
            datasets[child.get("name")] = sub_data
    return params, datasets


def load_tool(path: Path) -> Tool:
    """Parse ``path`` with its macros expanded, and its tests."""
    raw = ET.parse(path).getroot()
    tokens, xmls = _macros(raw, path.parent)
    root = _expand(raw, tokens, xmls)
    tool = Tool(path, root)
    inputs = root.find("inputs")
    for test in root.find("tests").findall("test"):
        params, datasets = _test_values(test, inputs)
        code = test.get("expect_exit_code")
        tool.tests.append(ToolTest(
            params=params, datasets=datasets, expect_failure=test.get("expect_failure") == "true",
            expect_exit_code=int(code) if code is not None else None,
            outputs={o.get("name"): o for o in test.findall("output")},
            stdout=test.find("assert_stdout"), stderr=test.find("assert_stderr"),
        ))
    return tool


# --- assertions --------------------------------------------------------------------------------------------------------
def has_h5_keys(path: Path, keys: str) -> None:
    """Galaxy's ``has_h5_keys``: every comma-separated key is a group or dataset of the HDF5 file."""
    import h5py

    wanted = sorted(k.strip() for k in keys.strip().split(","))
    found: list[str] = []
    with h5py.File(path, "r", locking=False) as f:
        f.visit(found.append)
    missing = [k for k in wanted if k not in found]
    assert not missing, f"H5 keys missing: {missing} (has {found[:20]}...)"


def check_assertions(block: ET.Element | None, *, text: str | None = None, path: Path | None = None) -> int:
    """Check the assertions of an ``<assert_contents>``/``<assert_stdout>``/``<assert_stderr>``; count them."""
    if block is None:
        return 0
    n = 0
    for assertion in block:
        content = text if text is not None else (None if path is None else path.read_bytes())
        kind = assertion.tag
        if kind == "has_h5_keys":
            has_h5_keys(path, assertion.get("keys"))
        elif kind == "has_text":
            assert assertion.get("text") in _as_text(content), (assertion.get("text"), _as_text(content)[:500])
        elif kind == "not_has_text":
            assert assertion.get("text") not in _as_text(content)
        elif kind == "has_n_lines":
            assert len(_as_text(content).splitlines()) == int(assertion.get("n")), _as_text(content)
        else:
            raise ValueError(f"assertion {kind!r} is not checked here")
        n += 1
    return n


def _as_text(content) -> str:
    return content.decode("utf-8", "replace") if isinstance(content, bytes) else (content or "")
