"""Reading scenario files, with errors a person can act on.

Every problem becomes a :class:`ScenarioError` whose lines look like::

    scenarios/smoke.yaml:14: journey[1].stations[0]: unknown station 'dbx'; expected one of db, web

(file, line of the offending value, field path, what was wrong and what was expected).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from models.scenario import Scenario, semantic_errors

__all__ = ["ScenarioError", "load_scenario", "parse_scenario", "apply_overlay"]


class ScenarioError(Exception):
    """A scenario could not be read; ``problems`` lists one message per problem."""

    def __init__(self, source: str, problems: Sequence[str]):
        self.source = source
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


def _path_text(loc: Iterable[object]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _line_of(node: yaml.Node | None, loc: Sequence[object]) -> int | None:
    """The 1-based line of the YAML node at ``loc`` (or of its nearest parent that exists)."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == part:
                    node = value if not isinstance(part, str) or value is not None else key
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
        else:
            return line
        line = node.start_mark.line + 1
    return line


def _known_fields(model: type[BaseModel] | None) -> list[str]:
    if model is None:
        return []
    return [f.alias or name for name, f in model.model_fields.items() if name != "path"]


def _model_at(loc: Sequence[object]) -> type[BaseModel] | None:
    """The pydantic model class that holds the field at ``loc`` (for 'did you mean')."""
    model: Any = Scenario
    skip_key = False
    for part in loc[:-1]:
        if isinstance(part, int) or model is None:
            continue
        if skip_key:  # a key of a mapping field such as system.stations.<name>
            skip_key = False
            continue
        fields = getattr(model, "model_fields", {})
        field = fields.get(part) or next((f for f in fields.values() if f.alias == part), None)
        if field is None:
            return None
        ann = field.annotation
        skip_key = getattr(ann, "__origin__", None) is dict
        model = _unwrap(ann)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _unwrap(ann: Any) -> Any:
    """The first BaseModel class inside an annotation like ``list[Step] | None``."""
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in getattr(ann, "__args__", ()) or ():
        found = _unwrap(arg)
        if found is not None:
            return found
    return None


def _describe(err: dict[str, Any]) -> tuple[tuple[object, ...], str]:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p in _UNION_TAGS)))
    kind = err["type"]
    msg = err["msg"]
    if kind == "extra_forbidden":
        field = str(loc[-1])
        known = _known_fields(_model_at(loc))
        close = difflib.get_close_matches(field, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else (f"; expected one of {', '.join(known)}" if known else "")
        return loc, f"unknown field {field!r}{hint}"
    if kind == "missing":
        return loc, "required field is missing"
    if kind == "union_tag_invalid":
        ctx = err.get("ctx", {})
        return (
            loc,
            f"unknown {str(ctx.get('discriminator', 'kind')).strip(chr(39))} {ctx.get('tag')!r}; expected one of "
            f"{ctx.get('expected_tags')}",
        )
    if kind == "union_tag_not_found":
        ctx = err.get("ctx", {})
        return loc, f"missing {ctx.get('discriminator', 'kind')!s} key (what kind of distribution or curve this is)"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    msg = msg.replace("Input should be", "must be").replace("List should have", "must have").replace(" after validation", "")
    msg = msg if len(msg) <= 4 * QUOTE else msg[: 4 * QUOTE] + "…"
    return loc, f"{msg} (got {_quote(err.get('input'))})" if kind in _SHOW_INPUT else msg


def _quote(value: object) -> str:
    """A bad value for an error message, cut to :data:`QUOTE` characters."""
    text = repr(value) if not isinstance(value, (dict, list)) else f"a {type(value).__name__} of {len(value)}"
    return text if len(text) <= QUOTE else text[:QUOTE] + "…"


_UNION_TAGS = {"constant", "deterministic", "exponential", "exp", "erlang", "gamma", "lognormal", "uniform", "piecewise", "launch-surge"}
_SHOW_INPUT = {
    "greater_than",
    "greater_than_equal",
    "less_than",
    "less_than_equal",
    "int_parsing",
    "float_parsing",
    "int_type",
    "float_type",
    "string_type",
    "bool_type",
    "literal_error",
    "list_type",
    "dict_type",
    "model_type",
    "too_short",
    "int_from_float",
}


def parse_scenario(text: str, source: str = "<scenario>", overlay: dict[str, Any] | None = None) -> Scenario:
    """Validate scenario YAML text; ``source`` names it in errors."""
    if len(text) > MAX_TEXT:
        raise ScenarioError(source, [f"{source}: {len(text):,} characters; a scenario is at most {MAX_TEXT:,}"])
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        problem = _shape_problem(node, source)  # before anything expands the aliases
        if problem:
            raise ScenarioError(source, [problem])
        data = yaml.load(text, Loader=yaml.SafeLoader)
    except RecursionError:
        raise ScenarioError(source, [f"{source}: the YAML is nested too deeply"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise ScenarioError(source, [f"{where}: YAML syntax error: {problem}"]) from None
    if not isinstance(data, dict):
        raise ScenarioError(source, [f"{source}: expected a mapping of scenario fields at the top level, got {type(data).__name__}"])
    if overlay:
        data = apply_overlay(data, overlay)
    try:
        scenario = Scenario.model_validate({**data, "path": source})
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc, message = _describe(err)  # type: ignore[arg-type]
            line = _line_of(node, loc)
            where = f"{source}:{line}" if line else source
            problems.append(f"{where}: {_path_text(loc)}: {message}")
        raise ScenarioError(source, list(dict.fromkeys(problems))) from None
    problems = [f"{source}:{_line_of(node, loc)}: {_path_text(loc)}: {message}" for loc, message in semantic_errors(scenario)]
    if problems:
        raise ScenarioError(source, problems)
    from models.arrivals import curve_problem  # the curve's own feasibility (e.g. a total it cannot reach)

    problem = curve_problem(scenario)
    if problem:
        raise ScenarioError(source, [f"{source}:{_line_of(node, ('arrivals',))}: arrivals: {problem}"])
    return scenario


MAX_TEXT = 1_000_000  # characters in a scenario file
MAX_VALUES = 100_000  # YAML values a scenario expands to, aliases followed (a few hundred in practice)
QUOTE = 60  # characters of a bad value an error message shows


def _shape_problem(root: yaml.Node | None, source: str) -> str | None:
    """A duplicate key, or more values than :data:`MAX_VALUES` once aliases are followed (an alias bomb); None when neither.

    Sizes are counted on the composed node graph, where an alias is a shared
    node, each node once: the expansion is never built.
    """
    if root is None:
        return None
    size: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        if id(node) in size:
            continue
        children: list[yaml.Node] = []
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and not done:
                    if key.value in seen:
                        return f"{source}:{key.start_mark.line + 1}: duplicate key {key.value[:QUOTE]!r} (each key once)"
                    seen.add(key.value)
                children += [key, value]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        if done:
            size[id(node)] = 1 + sum(size[id(c)] for c in children)
            if size[id(node)] > MAX_VALUES:
                return (
                    f"{source}:{node.start_mark.line + 1}: the YAML expands to more than {MAX_VALUES:,} values (aliases repeating aliases?)"
                )
            continue
        stack.append((node, True))
        stack += [(c, False) for c in children if id(c) not in size]
    return None


def load_scenario(path: str | Path, overlay: dict[str, Any] | None = None) -> Scenario:
    """Read and validate a scenario file (optionally with an overlay mapping merged on top)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScenarioError(str(p), [f"{p}: no such scenario file"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(str(p), [f"{p}: cannot read the scenario: {exc}"]) from None
    return parse_scenario(text, str(p), overlay)


def apply_overlay(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``overlay`` onto ``base`` (mappings merge, anything else replaces)."""
    out = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = apply_overlay(out[key], value)
        else:
            out[key] = value
    return out
