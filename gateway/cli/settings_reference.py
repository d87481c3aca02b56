"""`records-gateway settings-reference`: docs/settings.md, written from the settings model.

Every field of `gateway.config.Settings` and of the models inside it, with its type,
default, environment variable and description. The description is the field's
`Field(description=...)` where it has one, else the comment beside or above the field in
gateway/config.py: the page is generated from the code, so it cannot drift from it
(tests/test_settings_reference.py regenerates it and compares).
"""
from __future__ import annotations

import ast
import inspect
import io
import json
import textwrap
import tokenize
import types
import typing
from functools import cache

import click
from pydantic import BaseModel, SecretStr
from pydantic_core import PydanticUndefined

HEADER = """# Settings

Generated from the settings model (`gateway/config.py`) by
`records-gateway settings-reference > docs/settings.md`; do not edit by hand.

Sources, lowest first: the defaults below, the file named by `GATEWAY_CONFIG_FILE`
(TOML or JSON, the names below as keys and tables), environment variables (the
**environment** column: `GATEWAY_` and the path, `__` between levels; a table's own
name, such as a source's, takes its place in upper case), then values passed in code.
A list or table can be given whole in one variable as JSON. A wrong setting stops the
gateway at start-up with one line naming it. Secrets belong in files (the `*_file`
settings) or the environment, never in the configuration file.
"""


@cache
def _comments(cls: type) -> dict[str, str]:
    """Field name -> the comments above it and on its line, in the class's source."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    lines = source.splitlines()
    notes: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            notes[tok.start[0]] = tok.string.lstrip("#").strip()
    out: dict[str, str] = {}
    [node] = ast.parse(source).body
    for stmt in node.body:
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        above, n = [], stmt.lineno - 1
        while n in notes and lines[n - 1].strip().startswith("#"):
            above.insert(0, notes[n])
            n -= 1
        beside = [notes[i] for i in range(stmt.lineno, stmt.end_lineno + 1) if i in notes]
        out[stmt.target.id] = " ".join(above + beside)
    return out


def _model(annotation) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) \
        else None


def _inner(annotation) -> tuple[str, list[type[BaseModel]]]:
    """How nested models sit in a field: "" (itself, maybe optional, or one of several
    kinds), "<name>" (a table of them by name) or "[]" (a list of them); and the models,
    none for a plain value."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if _model(annotation):
        return "", [annotation]
    if origin in (typing.Union, types.UnionType) and args and all(map(_model, args)):
        return "", args
    if origin is dict and len(args) == 2 and _model(args[1]):
        return "<name>", [args[1]]
    if origin is list and args and _model(args[0]):
        return "[]", [args[0]]
    return "", []


def _type(annotation) -> str:
    if annotation is SecretStr:
        return "secret"
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return {"Path": "path", "str": "string", "int": "integer", "float": "number",
                "bool": "boolean"}.get(annotation.__name__, annotation.__name__)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin is typing.Annotated:
        return _type(args[0])
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type(a) if a is not type(None) else "none" for a in args)
    if origin is list:
        return f"list of {_type(args[0])}"
    if origin is dict:
        return f"table of {_type(args[1])}"
    return str(annotation).replace("typing.", "")


def _default(field, value=PydanticUndefined) -> str:
    """A field's default; `value` where the table holding it has a default of its own."""
    if value is PydanticUndefined:
        if field.is_required():
            return "required"
        value = field.default_factory() if field.default_factory is not None else field.default
    if isinstance(value, BaseModel):
        return "(table below)"
    if isinstance(value, (list, dict)):
        return f"`{json.dumps(value)}`" if value else "empty"
    if value is None or value is PydanticUndefined:
        return "none"
    return f"`{json.dumps(str(value) if hasattr(value, '__fspath__') else value)}`"


def _rows(model: type[BaseModel], path: list[str], env: list[str] | None, defaults,
          sections: list) -> list[tuple]:
    """The table of one model; nested models become sections of their own (appended)."""
    rows = []
    comments: dict[str, str] = {}
    for cls in reversed(model.__mro__):  # fields a base model declares (TlsClient's)
        if cls.__module__ == model.__module__:
            comments.update(_comments(cls))
    for name, field in model.model_fields.items():
        key = field.alias or name
        where, nested = _inner(field.annotation)
        description = field.description or comments.get(name, "")
        variable = "GATEWAY_" + "__".join(env + [name.upper()]) if env is not None else ""
        for variant in nested:
            sub_path = path + [key + (f".{where}" if where == "<name>" else where)]
            sub_env = None if where == "[]" or env is None else \
                env + [name.upper()] + (["<NAME>"] if where else [])
            value = getattr(defaults, name, None) if defaults is not None else None
            if value is None and not where and field.default_factory is not None:
                value = field.default_factory()
            value = value if isinstance(value, variant) else None
            sections.append((variant, sub_path, sub_env, description, value, len(nested) > 1))
        kind = {"": "table", "<name>": "tables by name", "[]": "list of tables"}[where] \
            if nested else _type(field.annotation)
        default = _default(field, getattr(defaults, name)) if defaults is not None \
            else _default(field)
        rows.append((".".join(path + [key]), kind, default,
                     f"`{variable}`" if variable else "(JSON, whole list)", description))
    return rows


def reference(settings: type[BaseModel] | None = None) -> str:
    """The Markdown page documenting every setting (of `gateway.config.Settings`)."""
    if settings is None:
        from gateway.config import Settings as settings

    out = [HEADER]
    sections: list = [(settings, [], [], "", None, False)]
    while sections:
        model, path, env, description, defaults, variant = sections.pop(0)
        title = ".".join(path) or "Top level"
        if variant:  # one of several kinds of table: named by its `kind`
            title += f' (kind = "{typing.get_args(model.model_fields["kind"].annotation)[0]}")'
        out.append(f"## {title}\n")
        intro = " ".join(
            (inspect.getdoc(model) if model.__doc__ and model is not settings else "").split())
        for text in dict.fromkeys(t for t in (description, intro) if t):
            out.append(text + "\n")
        rows = _rows(model, path, env, defaults, sections)
        out.append("| setting | type | default | environment | description |")
        out.append("| --- | --- | --- | --- | --- |")
        for row in rows:
            out.append("| " + " | ".join(c.replace("|", "\\|") if i in (0, 4) else c
                                        for i, c in enumerate(row)) + " |")
        out.append("")
    return "\n".join(out)


@click.command("settings-reference")
def settings_reference() -> None:
    """Print the reference of every setting (docs/settings.md) as Markdown."""
    click.echo(reference(), nl=False)
