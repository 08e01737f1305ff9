"""Methods by name, timm-style: ``@register_method`` on the class, ``get_method("dec")`` to find it.

Every module directly under ``methods/`` is imported on first lookup, so adding a method is adding
one file. Methods can also live outside the repo: in an installed package, through the
``clusterbench.methods`` entry-point group (each entry point names a module to import), or in
modules / ``.py`` files named in ``BENCH_PLUGINS`` (os.pathsep-separated; passed on to Ray workers).
:class:`Registry` is the one name -> class table; stages (:mod:`bench.stages`) keep theirs in one too.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import os
import pkgutil
import sys
import types
import typing
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import ValidationError

from bench.errors import BenchError, brief

if TYPE_CHECKING:  # (bench.method imports bench.stages, which uses Registry: types only here)
    from bench.method import ClusteringMethod, MethodConfig

T = TypeVar("T", bound=type)


class Registry(Generic[T]):
    """Classes by their ``name`` attribute. ``discover`` imports the modules that register (once, on the first
    lookup); ``check`` refuses a malformed class at registration (a TypeError at import: a programming error)."""

    def __init__(self, kind: str, discover: Callable[[], None], check: Callable[[T], None] | None = None,
                 hint: str = ""):
        self.kind, self._discover, self._check, self._hint = kind, discover, check, hint
        self._classes: dict[str, T] = {}
        self._discovered = False

    def register(self, cls: T) -> T:
        """Class decorator: make ``cls`` findable by its ``name``."""
        name = getattr(cls, "name", None)
        if not name or not isinstance(name, str):
            raise TypeError(f"{cls.__qualname__} needs a class attribute `name`")
        known = self._classes.get(name)
        if known is not None and known is not cls:
            raise TypeError(f"two {self.kind}s are registered as {name!r}: {known.__module__} and {cls.__module__}")
        if self._check:
            self._check(cls)
        self._classes[name] = cls
        return cls

    def _ensure(self) -> None:
        if not self._discovered:
            self._discovered = True
            self._discover()

    def get(self, name: str) -> T:
        self._ensure()
        try:
            return self._classes[name]
        except KeyError:
            raise BenchError(f"unknown {self.kind} {name!r}{_did_you_mean(name, self._classes)}; known {self.kind}s: "
                             f"{', '.join(sorted(self._classes)) or 'none'}{self._hint}") from None

    def find(self, name: str) -> T | None:
        self._ensure()
        return self._classes.get(name)

    def names(self) -> list[str]:
        self._ensure()
        return sorted(self._classes)


def _discover_methods() -> None:
    import methods

    for mod in pkgutil.iter_modules(methods.__path__):
        if mod.ispkg or mod.name.startswith("_"):
            continue  # the packages (engine, stages, nn, losses, augment, cluster) hold shared parts, not methods
        importlib.import_module(f"methods.{mod.name}")
    for ep in entry_points(group="clusterbench.methods"):
        importlib.import_module(ep.value)
    for item in filter(None, os.environ.get("BENCH_PLUGINS", "").split(os.pathsep)):
        _import_plugin(item)


def _check_method(cls: type[ClusteringMethod]) -> None:
    if "default" not in cls.variants:
        raise TypeError(f"method {cls.name!r}: `variants` must contain 'default' (the paper recipe)")


METHODS: Registry[type[ClusteringMethod]] = Registry("method", _discover_methods, _check_method,
                                                     hint=" (`bench list` shows them)")
register_method = METHODS.register


def _import_plugin(item: str) -> None:
    """A module name or a path to a .py file that registers methods (BENCH_PLUGINS)."""
    if item.endswith(".py"):
        path = Path(item).expanduser().resolve()
        if not path.exists():
            raise BenchError(f"BENCH_PLUGINS names {path}, which does not exist; fix or unset BENCH_PLUGINS")
        spec = importlib.util.spec_from_file_location(f"bench_plugin_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    else:
        try:
            importlib.import_module(item)
        except ModuleNotFoundError as exc:
            if exc.name is None or not (item == exc.name or item.startswith(exc.name + ".")):
                raise  # the plugin itself imports something missing: its own traceback says what
            raise BenchError(f"BENCH_PLUGINS names {brief(item)}, which is neither an importable module nor a path "
                             "ending in .py; fix or unset BENCH_PLUGINS") from None


def method_names() -> list[str]:
    return METHODS.names()


def get_method(name: str) -> type[ClusteringMethod]:
    return METHODS.get(name)


def method_label(name: str) -> str:
    """The method's display label (``label``, e.g. "k-means"), or its name when it has none or is unknown."""
    cls = METHODS.find(name)
    return (getattr(cls, "label", "") or name) if cls else name


def _did_you_mean(name: str, options) -> str:
    close = difflib.get_close_matches(str(name), list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def resolve_config(method: str, variant: str = "default", dataset: str | None = None,
                   overrides: dict[str, Any] | None = None) -> MethodConfig:
    """Paper defaults <- per-dataset defaults <- variant <- user overrides, validated.

    Raises BenchError naming the bad key or value in one line.
    """
    cls = get_method(method)
    if variant not in cls.variants:
        raise BenchError(f"method {method!r} has no variant {variant!r}{_did_you_mean(variant, cls.variants)}; "
                         f"variants: {', '.join(cls.variants)}")
    merged: dict[str, Any] = {}
    if dataset is not None:
        merged.update(cls.dataset_defaults.get(dataset, {}))
    merged.update(cls.variants[variant])
    merged.update(overrides or {})
    fields = cls.Config.model_fields
    for key in merged:
        if key not in fields:
            raise BenchError(f"method {method!r} has no config key {key!r}{_did_you_mean(key, fields)}; "
                             f"keys: {', '.join(fields)}")
    try:
        return cls.Config(**merged)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise BenchError(f"method {method!r}, config key {loc!r}: {err['msg']} (got {err.get('input')!r})") from None


def type_text(annotation: Any) -> str:
    """A config field's type as a reader writes it: ``int``, ``'sgd' | 'adam'``, ``list[int]``, ``float | None``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_text(a) for a in args)
    if origin is typing.Annotated:
        return type_text(args[0])
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join('...' if a is Ellipsis else type_text(a) for a in args)}]" if args else name
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation).replace("typing.", ""))


def default_text(field: Any) -> str:
    """A config field's default: its value, the value its factory makes, or 'required'."""
    if field.default_factory is not None:
        try:
            return repr(field.default_factory())
        except TypeError:  # a factory that needs the validated data
            return "(computed)"
    if field.is_required():
        return "required"
    return repr(field.default)


def describe_method(name: str) -> str:
    """Human-readable config listing for `bench list NAME`."""
    cls = get_method(name)
    lines = [f"{cls.name}: {cls.paper}", f"  splits: train={cls.train_split} eval={cls.eval_split}",
             f"  selection rule: {cls.selection_rule}", f"  variants: {', '.join(cls.variants)}",
             "  config (key: type = paper default):"]
    for key, field in cls.Config.model_fields.items():
        desc = f"  # {field.description}" if field.description else ""
        lines.append(f"    {key}: {type_text(field.annotation)} = {default_text(field)}{desc}")
    for variant, overrides in cls.variants.items():
        if overrides:
            lines.append(f"  variant {variant}: " + ", ".join(f"{k}={v!r}" for k, v in overrides.items()))
    for ds, overrides in cls.dataset_defaults.items():
        lines.append(f"  on {ds}: " + ", ".join(f"{k}={v!r}" for k, v in overrides.items()))
    return "\n".join(lines)
