"""Validating FHIR R4 JSON: a check, fast; the JSON that travels is never the models'.

Validation tells whether a resource is valid R4; it never produces what is delivered
(that is the source's own JSON, see mappings/fhir/jsontext.py). Two definitions are used:

- `fhir.resources.R4B` models (`model_validate`, never `model_construct`) for every type
  R4B defines as R4 does (all but those below: checked by tests/fhir against R4's own
  definitions), through `MemoValidator`;
- R4's own definitions (FHIR 4.0.1, the `fhirclient` models of SMART Health IT) for the
  types R4B lacks or defines differently (`R4_DEFINED`: the MedicinalProduct family,
  EffectEvidenceSynthesis, RiskEvidenceSynthesis, SubstanceSpecification and the other
  Substance* types, and R4's Evidence and EvidenceVariable, whose R4B structures differ):
  element names, types, cardinality, required elements, date formats; plus the id
  grammar of the resource and of its contained resources. `check_r4` does it.

`check` picks the one that applies. Their errors (`ResourceInvalid`) name the check
that failed, element paths and messages, never values. Pulled resources meet a faster
check first (mappings/fhir/schema_check.py); what it does not accept comes here.

What makes the R4B check fast is that a record repeats itself: the same codes, the same
patient reference, the same categories and profiles appear in thousands of resources.
Validation of a complex element (a CodeableConcept, a Reference, a Meta, a backbone
element) depends on nothing but its own content, so `MemoValidator` validates each
distinct element once, with its own R4B model, and hands the validated instance to every
resource that contains the identical element: pydantic accepts an instance of the
field's model as is. The result is the same model tree a plain `model_validate` builds
(checked by tests on whole Synthea records), built once per distinct element instead of
once per occurrence. Its input is never changed (numbers may be `jsontext.Number`s: the
memo's keys keep their text).

Consequence: resources validated by one validator share identical nested elements.
Treat the returned models as read-only below the top level, or `model_copy(deep=True)`.
"""
from __future__ import annotations

import importlib
import json
import re
import typing

import orjson
from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from .jsontext import dumps as _exact_dumps
from .jsontext import fragment

_dumps = orjson.dumps
_FIELD_CACHE: dict[tuple[type, str], type | None] = {}
_ALIASES: dict[type, dict[str, str]] = {}
_NOT_MEMOIZED = ("Resource", "DomainResource")
_ID = re.compile(r"[A-Za-z0-9\-\.]{1,64}")

#: R4 types that R4B lacks or structures differently: checked against R4's own
#: definitions (tests/fhir/test_fhir_fidelity.py derives this set from both definitions)
R4_DEFINED = frozenset({
    "EffectEvidenceSynthesis", "Evidence", "EvidenceVariable", "MedicinalProduct",
    "MedicinalProductAuthorization", "MedicinalProductContraindication",
    "MedicinalProductIndication", "MedicinalProductIngredient", "MedicinalProductInteraction",
    "MedicinalProductManufactured", "MedicinalProductPackaged", "MedicinalProductPharmaceutical",
    "MedicinalProductUndesirableEffect", "RiskEvidenceSynthesis", "SubstanceNucleicAcid",
    "SubstancePolymer", "SubstanceProtein", "SubstanceReferenceInformation",
    "SubstanceSourceMaterial", "SubstanceSpecification",
})
R4B_CHECK = "the FHIR R4B models of fhir.resources"
R4_CHECK = "FHIR R4 4.0.1's own definitions, as fhirclient's models give them"


class ResourceInvalid(ValueError):
    """A resource fails its check; the message names the check, element paths and
    messages (never values)."""

    def __init__(self, check: str, errors: str):
        super().__init__(f"{errors} (checked against {check})")
        self.check = check
        self.errors = errors


def model_class(resource_type: str) -> type:
    """The R4B model class for a resourceType; KeyError for an unknown type."""
    try:
        return get_fhir_model_class(resource_type)
    except (KeyError, ValueError, ImportError, AttributeError):
        raise KeyError(resource_type) from None


def r4_class(resource_type: str) -> type:
    """The FHIR R4 (4.0.1) model class of a resourceType (fhirclient); KeyError if R4 has none."""
    from fhirclient.models.resource import Resource

    if not resource_type.isalpha():
        raise KeyError(resource_type)
    try:
        klass = getattr(importlib.import_module(f"fhirclient.models.{resource_type.lower()}"), resource_type)
    except (ImportError, AttributeError):
        raise KeyError(resource_type) from None
    if not (isinstance(klass, type) and issubclass(klass, Resource)
            and getattr(klass, "resource_type", None) == resource_type):
        raise KeyError(resource_type)
    return klass


def check_name(resource_type: str) -> str:
    """Which check a resource of this type gets (R4B_CHECK or R4_CHECK); KeyError if
    the type is not an R4 resource type at all."""
    if resource_type in R4_DEFINED:
        r4_class(resource_type)
        return R4_CHECK
    model_class(resource_type)
    return R4B_CHECK


def errors_text(exc: ValidationError, limit: int = 8) -> str:
    """A pydantic ValidationError as element paths and messages, without values."""
    parts = []
    for err in exc.errors(include_input=False, include_url=False)[:limit]:
        loc = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{loc}: {err.get('msg', '')}" if loc else str(err.get("msg", "")))
    more = exc.error_count() - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


_NOISE = re.compile(r" (?:on|for|in data for) <[^>]*>| <class '[^']*'>|, expecting <class '[^']*'>")


def _r4_errors(exc, path: str = "") -> list[str]:
    errors = getattr(exc, "errors", None)
    if isinstance(errors, list):  # fhirclient's FHIRValidationError: nested, with a path
        here = ".".join(p for p in (path, getattr(exc, "path", None) or "") if p)
        return [line for e in errors for line in _r4_errors(e, here)]
    message = _NOISE.sub("", str(exc).strip("'\""))
    return [f"{path}: {message}" if path else message]


def check_r4(resource: dict):
    """Check a resource against FHIR R4's own definitions (fhirclient's R4 models, plus
    the id grammar); return the model; ResourceInvalid naming what fails."""
    rtype = resource.get("resourceType")
    klass = r4_class(rtype if isinstance(rtype, str) else "")
    problems = []
    for n, item in enumerate([resource] + list(resource.get("contained") or [])):
        rid = item.get("id") if isinstance(item, dict) else None
        if rid is not None and not (isinstance(rid, str) and _ID.fullmatch(rid)):
            problems.append(f"{'contained.%d.' % (n - 1) if n else ''}id: not a FHIR id")
    try:  # fhirclient's decimals are floats: it reads the JSON as plain JSON
        model = klass(json.loads(_exact_dumps(resource)), strict=True)
    except Exception as exc:  # noqa: BLE001  fhirclient raises FHIRValidationError and plain errors
        problems.extend(_r4_errors(exc))
        model = None
    if problems:
        shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise ResourceInvalid(R4_CHECK, shown)
    return model


def check(resource: dict, validator: "MemoValidator | None" = None):
    """Check one resource with the definitions that apply to its type; return the
    validated model; ResourceInvalid (naming the check) or KeyError (unknown type)."""
    rtype = resource.get("resourceType")
    name = check_name(rtype if isinstance(rtype, str) else "")
    if name == R4_CHECK:
        return check_r4(resource)
    try:
        return (validator.validate if validator is not None else model_class(rtype).model_validate)(resource)
    except ValidationError as exc:
        if validator is None:
            raise ResourceInvalid(R4B_CHECK, errors_text(exc)) from None
    try:  # again without the memo: its errors are relative to the element, these to the resource
        model_class(rtype).model_validate(resource)
    except ValidationError as exc:
        raise ResourceInvalid(R4B_CHECK, errors_text(exc)) from None
    raise ResourceInvalid(R4B_CHECK, "invalid (the element-wise check refused it)")


def _field_model(cls: type, key: str) -> type | None:
    """The model class of a complex field (None for primitives and Resource-typed fields)."""
    ck = (cls, key)
    try:
        return _FIELD_CACHE[ck]
    except KeyError:
        pass
    aliases = _ALIASES.get(cls)
    if aliases is None:
        aliases = _ALIASES[cls] = {(f.alias or n): n for n, f in cls.model_fields.items()}
    found = None
    name = aliases.get(key)
    if name is not None:
        stack = [cls.model_fields[name].annotation]
        while stack:
            ann = stack.pop()
            getter = getattr(ann, "get_model_klass", None)
            if getter is not None:
                klass = getter()
                if klass.__name__ not in _NOT_MEMOIZED and "resourceType" not in klass.model_fields:
                    found = klass
                break
            stack.extend(typing.get_args(ann))
    _FIELD_CACHE[ck] = found
    return found


class MemoValidator:
    """Validate resources with R4B models, sharing validated identical elements."""

    #: elements whose JSON is longer than this are validated without the memo (large
    #: attachments and narratives are unique and would only cost memory)
    MAX_KEY = 2048
    #: after this many misses a model class whose elements (almost) never repeat
    #: (Meta, Identifier, ...) stops being memoized
    LEARN_AFTER = 64

    def __init__(self, max_entries: int = 4096):
        self.memo: dict[tuple[type, bytes], object] = {}
        self.max_entries = max_entries  # oldest quarter dropped beyond this (bounded memory)
        self.hits = 0
        self.misses = 0
        self.bypassed = 0  # elements validated without the memo (unique classes, large)
        self._hot: set[int] = set()  # hashes of keys hit since last considered for eviction
        self._class_hits: dict[type, int] = {}
        self._class_misses: dict[type, int] = {}
        self._unique: set[type] = set()

    def validate(self, resource: dict):
        """Validate one resource dict (left as it is); raises pydantic ValidationError."""
        cls = model_class(resource.get("resourceType", ""))
        return cls.model_validate(self._prepare(cls, resource))

    def _element(self, klass: type, value: dict):
        if klass in self._unique:
            self.bypassed += 1
            return klass.model_validate(self._prepare(klass, value))
        try:
            dumped = _dumps(value, default=fragment)
        except orjson.JSONEncodeError:  # integers beyond 64 bits: checked without the memo
            dumped = b"\0" * (self.MAX_KEY + 1)
        if len(dumped) > self.MAX_KEY:
            self.bypassed += 1
            return klass.model_validate(self._prepare(klass, value))
        key = (klass, dumped)
        inst = self.memo.get(key)
        if inst is None:
            self.misses += 1
            misses = self._class_misses[klass] = self._class_misses.get(klass, 0) + 1
            if misses >= self.LEARN_AFTER and self._class_hits.get(klass, 0) * 20 < misses:
                self._unique.add(klass)
            inst = klass.model_validate(self._prepare(klass, value))
            if len(self.memo) >= self.max_entries:
                self._evict()
            self.memo[(klass, bytes(memoryview(dumped)))] = inst  # a key of its own size
        else:
            self.hits += 1
            self._hot.add(hash(key))
            self._class_hits[klass] = self._class_hits.get(klass, 0) + 1
        return inst

    def _evict(self) -> None:
        """Drop the oldest quarter of the memo, except entries hit since they were last
        looked at here (second chance: they move to the young end)."""
        memo, hot = self.memo, self._hot
        for key in list(memo)[: self.max_entries // 4]:
            inst = memo.pop(key)
            if hash(key) in hot:
                hot.discard(hash(key))
                memo[key] = inst
        if len(memo) >= self.max_entries:  # everything was hot: plain FIFO this time
            for key in list(memo)[: self.max_entries // 4]:
                del memo[key]
                hot.discard(hash(key))

    def _prepare(self, cls: type, data: dict) -> dict:
        """A copy of `data` whose complex elements are validated instances (the copy is
        made only where something is replaced; `data` itself is never changed)."""
        out = None
        for key, value in data.items():
            new = value
            if type(value) is dict:
                klass = _field_model(cls, key)
                if klass is not None:
                    new = self._element(klass, value)
                elif key == "resource" or "resourceType" in value:
                    new = self._contained(value)
            elif type(value) is list and value and type(value[0]) is dict:
                klass = _field_model(cls, key)
                if klass is not None:
                    element = self._element
                    new = [element(klass, v) if type(v) is dict else v for v in value]
                elif key == "contained":
                    new = [self._contained(v) if type(v) is dict else v for v in value]
            if new is not value:
                if out is None:
                    out = dict(data)
                out[key] = new
        return data if out is None else out

    def _contained(self, resource: dict) -> dict:
        """Contained resources stay dicts (the parent validates them), their elements
        prepared like the parent's."""
        try:
            cls = model_class(resource.get("resourceType", ""))
        except KeyError:
            return resource  # the parent's validation reports the unknown type
        return self._prepare(cls, resource)
