"""Methods by name, timm-style: ``@register_method`` on the class, ``get_method("dec")`` to find it.

Every module directly under ``methods/`` is imported on first lookup, so adding a method is adding
one file. Methods can also live outside the repo: in an installed package, through the
``clusterbench.methods`` entry-point group (each entry point names a module to import), or in
modules / ``.py`` files named in ``BENCH_PLUGINS`` (os.pathsep-separated; passed on to Ray workers).
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
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from bench.errors import BenchError
from bench.method import ClusteringMethod, MethodConfig

_METHODS: dict[str, type[ClusteringMethod]] = {}
_discovered = False


def register_method(cls: type[ClusteringMethod]) -> type[ClusteringMethod]:
    """Class decorator: make a method findable by its ``name``."""
    name = getattr(cls, "name", None)
    if not name or not isinstance(name, str):
        raise TypeError(f"{cls.__qualname__} needs a class attribute `name`")
    if name in _METHODS and _METHODS[name] is not cls:
        raise TypeError(f"two methods are registered as {name!r}: {_METHODS[name].__module__} and {cls.__module__}")
    if "default" not in cls.variants:
        raise TypeError(f"method {name!r}: `variants` must contain 'default' (the paper recipe)")
    _METHODS[name] = cls
    return cls


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    import methods

    for mod in pkgutil.iter_modules(methods.__path__):
        if mod.ispkg or mod.name.startswith("_"):
            continue  # methods/common holds shared parts, not methods
        importlib.import_module(f"methods.{mod.name}")
    for ep in entry_points(group="clusterbench.methods"):
        importlib.import_module(ep.value)
    for item in filter(None, os.environ.get("BENCH_PLUGINS", "").split(os.pathsep)):
        _import_plugin(item)


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
        importlib.import_module(item)


def method_names() -> list[str]:
    _discover()
    return sorted(_METHODS)


def get_method(name: str) -> type[ClusteringMethod]:
    _discover()
    try:
        return _METHODS[name]
    except KeyError:
        raise BenchError(f"unknown method {name!r}{_did_you_mean(name, _METHODS)}; known methods: "
                         f"{', '.join(sorted(_METHODS))} (`bench list` shows them)") from None


def method_label(name: str) -> str:
    """The method's display label (``label``, e.g. "k-means"), or its name when it has none or is unknown."""
    _discover()
    cls = _METHODS.get(name)
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
