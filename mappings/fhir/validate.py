"""Validating FHIR R4 JSON with the `fhir.resources.R4B` models, fast.

Every resource goes through `Model.model_validate` (never `model_construct`). What makes
it fast is that a record repeats itself: the same codes, the same patient reference,
the same categories and profiles appear in thousands of resources. Validation of a
complex element (a CodeableConcept, a Reference, a Meta, a backbone element) depends
on nothing but its own content, so `MemoValidator` validates each distinct element
once, with its own R4B model, and hands the validated instance to every resource that
contains the identical element: pydantic accepts an instance of the field's model as
is. The result is the same model tree a plain `model_validate` builds (checked by
tests on whole Synthea records), built once per distinct element instead of once per
occurrence.

Consequence: resources of one record share identical nested elements. Treat the
returned models as read-only below the top level, or `model_copy(deep=True)` first.

Hooks let the caller rewrite an element before it is validated (references,
attachment URLs): `hooks` maps a model class name ("Reference", "Attachment") to a
function(dict) -> dict, applied before the element is looked up in the memo.
"""
from __future__ import annotations

import typing
from typing import Callable

import orjson
from fhir.resources.R4B import get_fhir_model_class

_dumps = orjson.dumps
_FIELD_CACHE: dict[tuple[type, str], type | None] = {}
_ALIASES: dict[type, dict[str, str]] = {}
_NOT_MEMOIZED = ("Resource", "DomainResource")


def model_class(resource_type: str) -> type:
    """The R4B model class for a resourceType; KeyError for an unknown type."""
    try:
        return get_fhir_model_class(resource_type)
    except (KeyError, ValueError, ImportError, AttributeError):
        raise KeyError(resource_type) from None


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
    """Validate resources of one record, sharing validated identical elements."""

    #: elements whose JSON is longer than this are validated without the memo (large
    #: attachments and narratives are unique and would only cost memory)
    MAX_KEY = 2048
    #: after this many misses a model class whose elements (almost) never repeat
    #: (Meta, Identifier, ...) stops being memoized
    LEARN_AFTER = 64

    def __init__(self, hooks: dict[str, Callable[[dict], dict]] | None = None, max_entries: int = 4096):
        self.memo: dict[tuple[type, bytes], object] = {}
        self.max_entries = max_entries  # oldest quarter dropped beyond this (bounded memory)
        self.hooks = {k: v for k, v in (hooks or {}).items()}
        self.hits = 0
        self.misses = 0
        self.bypassed = 0  # elements validated without the memo (unique classes, large)
        self._hot: set = set()  # keys hit since they were last considered for eviction
        self._class_hits: dict[type, int] = {}
        self._class_misses: dict[type, int] = {}
        self._unique: set[type] = set()

    def validate(self, resource: dict):
        """Validate one resource dict (modified in place); raises pydantic ValidationError."""
        cls = model_class(resource.get("resourceType", ""))
        return cls.model_validate(self._prepare(cls, resource))

    def _element(self, klass: type, value: dict):
        hook = self.hooks.get(klass.__name__)
        if hook is not None:
            value = hook(value)
        if klass in self._unique:
            self.bypassed += 1
            return klass.model_validate(self._prepare(klass, value))
        dumped = _dumps(value)
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
            self.memo[key] = inst
        else:
            self.hits += 1
            self._hot.add(key)
            self._class_hits[klass] = self._class_hits.get(klass, 0) + 1
        return inst

    def _evict(self) -> None:
        """Drop the oldest quarter of the memo, except entries hit since they were last
        looked at here (second chance: they move to the young end)."""
        memo, hot = self.memo, self._hot
        for key in list(memo)[: self.max_entries // 4]:
            inst = memo.pop(key)
            if key in hot:
                hot.discard(key)
                memo[key] = inst
        if len(memo) >= self.max_entries:  # everything was hot: plain FIFO this time
            for key in list(memo)[: self.max_entries // 4]:
                del memo[key]
                hot.discard(key)

    def _prepare(self, cls: type, data: dict) -> dict:
        for key, value in data.items():
            if type(value) is dict:
                klass = _field_model(cls, key)
                if klass is not None:
                    data[key] = self._element(klass, value)
                elif key == "resource" or "resourceType" in value:
                    self._contained(value)
            elif type(value) is list and value and type(value[0]) is dict:
                klass = _field_model(cls, key)
                if klass is not None:
                    element = self._element
                    data[key] = [element(klass, v) if type(v) is dict else v for v in value]
                elif key == "contained":
                    for v in value:
                        if type(v) is dict:
                            self._contained(v)
        return data

    def _contained(self, resource: dict) -> None:
        """Contained resources stay dicts (the parent validates them) but their elements
        are prepared, so hooks (reference rewriting) reach them too."""
        try:
            cls = model_class(resource.get("resourceType", ""))
        except KeyError:
            return  # the parent's validation reports the unknown type
        self._prepare(cls, resource)
