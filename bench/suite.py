"""Suite files: the grid (methods x variants x datasets x seeds) and how to run it.

Example (``suites/default.yaml``)::

    name: default
    seeds: [0, 1, 2]            # or a count: 5 -> seeds 0..4
    datasets: [digits]
    methods:
      - kmeans
      - name: dec
        variants: [default]
        config: {pretrain_iters_per_layer: 2000}      # overrides the paper defaults
        config_by_dataset: {mnist: {update_interval: 140}}
    resources: {cpus_per_trial: 1, gpus_per_trial: 0.25}
    tables:                    # optional paper-layout tables for `bench report`
      - title: DEC vs k-means
        rows: [{method: kmeans, label: k-means}, {method: dec, label: DEC}]
        metrics: [acc, nmi, ari]

Every key is checked before anything runs; a wrong key, type or value is one line naming it (an unknown
key with the closest allowed one). The file itself is read defensively (:func:`read_suite_yaml`): regular
UTF-8 files of at most 1 MiB only (a FIFO or device is refused without being opened for a blocking read),
plain YAML only (no tags beyond the core str/int/float/bool/null/seq/map), nesting at most
:data:`MAX_DEPTH` deep, aliases expanding to at most :data:`MAX_NODES` values, no repeated keys.
Names become file names, so they are plain words (:data:`NAME_PATTERN`).

This module imports neither torch nor ray: validating a suite is fast.
"""

from __future__ import annotations

import difflib
import errno
import os
import re
import stat
import tempfile
import typing
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator

from bench.errors import BenchError, brief, yaml_error

#: a protocol split (the methods' papers and the suites' overrides). Defined here, not in bench.method,
#: so that reading and checking a suite imports neither torch nor Ray (bench.method re-exports it).
Split = Literal["train", "test", "all"]

METRIC_NAMES = ("acc", "nmi", "ari")
#: the same as bench.method.Split; not imported from there, which would import torch
Split = Literal["train", "test", "all"]

MAX_SUITE_BYTES = 1 << 20
MAX_DEPTH = 32
#: values a YAML document may hold once its aliases are expanded (a real suite has a few hundred)
MAX_NODES = 100_000
MAX_SEEDS = 1000
MAX_SEED = 2**31 - 1  # torch, numpy and Python all take it
#: datasets, methods, variants or tables one suite may list
MAX_LIST = 200
#: (method, variant, dataset, seed) trials one suite may plan
MAX_TRIALS = 100_000
#: plain names: they become file and folder names (report folders, run ids, Ray trial folders)
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}"
_NAME_RE = re.compile(NAME_PATTERN)
#: libyaml's parser when PyYAML was built with it (several times faster), else the pure-Python one; both safe
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_CORE_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "seq", "map")}


def _plain_name(v: str) -> str:
    if not _NAME_RE.fullmatch(v):
        raise ValueError("must be a plain name (letters, digits, '-' and '_', at most 64 characters, not starting "
                         "with '-' or '_'): it names files")
    return v


Name = Annotated[str, AfterValidator(_plain_name)]


def check_name(value: str, what: str) -> str:
    """A command-line name (method, dataset, variant) as a plain name, or BenchError."""
    try:
        return _plain_name(value)
    except ValueError as exc:
        raise BenchError(f"{what} {brief(value)}: {exc}") from None
Seed = Annotated[StrictInt, Field(ge=0, le=MAX_SEED)]
Share = Annotated[float, Field(ge=0, le=1024, allow_inf_nan=False)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MethodEntry(_Strict):
    name: Name
    variants: Annotated[list[Name], Field(max_length=MAX_LIST)] = Field(default_factory=lambda: ["default"])
    config: dict[str, Any] = Field(default_factory=dict)
    config_by_dataset: dict[Name, dict[str, Any]] = Field(default_factory=dict)
    #: restrict this method to some of the suite's datasets
    datasets: Annotated[list[Name], Field(max_length=MAX_LIST)] | None = None
    gpus_per_trial: Share | None = None
    #: run this many seeds inside one trial (methods that batch seeds into one model)
    seed_batch: Annotated[StrictInt, Field(ge=1, le=MAX_SEEDS)] | None = None


class Resources(_Strict):
    cpus_per_trial: Annotated[float, Field(gt=0, le=1024, allow_inf_nan=False)] = 1.0
    #: None: the method's own default share when the cluster has GPUs, else 0
    gpus_per_trial: Share | None = None
    max_concurrent_trials: Annotated[StrictInt, Field(ge=1, le=100_000)] | None = None


class TableRow(_Strict):
    method: Name
    variant: Name = "default"
    label: Annotated[str, Field(max_length=200)] | None = None


class TableSpec(_Strict):
    title: Annotated[str, Field(max_length=200)]
    rows: Annotated[list[TableRow], Field(min_length=1)]
    datasets: list[Name] | None = None
    metrics: Annotated[list[Literal["acc", "nmi", "nmi_geometric", "ari"]], Field(min_length=1)] = Field(
        default_factory=lambda: list(METRIC_NAMES))


class ProtocolOverride(_Strict):
    train_split: Split | None = None
    eval_split: Split | None = None
    #: smoke and debugging runs only: the first N images of each split (records state it; never a paper protocol)
    max_images: Annotated[int, Field(ge=1, le=10_000_000)] | None = None


class SuiteSpec(_Strict):
    name: Name
    description: Annotated[str, Field(max_length=5000)] = ""
    seeds: Annotated[list[Seed], Field(max_length=MAX_SEEDS)]
    datasets: Annotated[list[Name], Field(max_length=MAX_LIST)]
    methods: Annotated[list[MethodEntry], Field(max_length=MAX_LIST)]
    protocol: ProtocolOverride = Field(default_factory=ProtocolOverride)
    resources: Resources = Field(default_factory=Resources)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    deterministic: bool = False
    tables: Annotated[list[TableSpec], Field(max_length=MAX_LIST)] = Field(default_factory=list)

    @field_validator("seeds", mode="before")
    @classmethod
    def _seed_count(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            if not 1 <= v <= MAX_SEEDS:
                raise ValueError(f"a seed count must be between 1 and {MAX_SEEDS}")
            return list(range(v))
        return v

    @field_validator("methods", mode="before")
    @classmethod
    def _method_names(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [{"name": m} if isinstance(m, str) else m for m in v]
        return v


# -- reading the file ------------------------------------------------------------------------------

def read_suite_yaml(path: str | Path) -> Any:
    """The parsed YAML of a suite file, or BenchError for anything that is not a small plain YAML file."""
    path = Path(path)
    text = _read_text(path, what="suite file", hint="pass a YAML file such as suites/default.yaml")
    return safe_yaml(text, str(path))


def _read_text(path: Path, *, what: str, hint: str) -> str:
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; fstat then tells what it is
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        why = "it is a symlink loop" if exc.errno == errno.ELOOP else (exc.strerror or type(exc).__name__)
        raise BenchError(f"cannot read {what} {path}: {why}; {hint}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise BenchError(f"{what} {path} is a folder; {hint}")
        if not stat.S_ISREG(st.st_mode):
            raise BenchError(f"{what} {path} is not a regular file (a FIFO, socket or device); {hint}")
        if st.st_size > MAX_SUITE_BYTES:
            raise BenchError(f"{what} {path} is {st.st_size:,} bytes, more than the {MAX_SUITE_BYTES:,} allowed; "
                             f"{hint}")
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as fh:
            raw = fh.read(MAX_SUITE_BYTES + 1)
    except OSError as exc:
        raise BenchError(f"cannot read {what} {path}: {exc.strerror or type(exc).__name__}; {hint}") from None
    finally:
        os.close(fd)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BenchError(f"{what} {path} is not UTF-8 text (byte {exc.start} is invalid); save it as UTF-8") from None


def safe_yaml(text: str, source: str = "<suite>") -> Any:
    """Plain YAML to Python values, refusing what a suite never needs and what can hang or explode:
    non-core tags, nesting deeper than MAX_DEPTH, alias expansion beyond MAX_NODES values, recursive
    aliases, repeated keys, several documents."""
    try:
        _check_events(text, source)
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            _check_nodes(node, source)
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise yaml_error(source, exc) from None
    except RecursionError:  # a cycle that slipped past _check_nodes; never a traceback
        raise BenchError(f"{source}: YAML nests too deeply or refers to itself; write plain lists and "
                         "mappings") from None


def _check_events(text: str, source: str) -> None:
    """One streaming pass (no recursion, nothing built): tags and nesting depth."""
    depth = 0
    for ev in yaml.parse(text, Loader=_Loader):
        tag = getattr(ev, "tag", None)
        if tag is not None and tag not in _CORE_TAGS and not (tag == "!" and isinstance(ev, yaml.ScalarEvent)):
            line = ev.start_mark.line + 1
            raise BenchError(f"{source}:{line}: YAML tag {brief(tag, 50)} is not allowed; a suite holds plain "
                             "mappings, lists, strings and numbers")
        if isinstance(ev, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise BenchError(f"{source}:{ev.start_mark.line + 1}: YAML nested more than {MAX_DEPTH} levels "
                                 "deep; a suite needs a few")
        elif isinstance(ev, yaml.CollectionEndEvent):
            depth -= 1


def _check_nodes(root: yaml.Node, source: str) -> None:
    """Expanded size (aliases counted every time they are used), cycles and repeated keys, iteratively."""
    size: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    active: set[int] = set()
    while stack:
        node, done = stack.pop()
        nid = id(node)
        if done:
            active.discard(nid)
            kids = _children(node)
            size[nid] = 1 + sum(size[id(k)] for k in kids)
            if size[nid] > MAX_NODES:
                raise BenchError(f"{source}: the YAML holds more than {MAX_NODES:,} values once its aliases are "
                                 "expanded (an alias bomb?); a suite needs a few hundred")
            continue
        if nid in size:
            continue
        if nid in active:
            raise BenchError(f"{source}:{node.start_mark.line + 1}: a YAML alias refers to the node that "
                             "contains it; write plain lists and mappings")
        if isinstance(node, yaml.MappingNode):
            dup, seen = None, set()
            for k, _ in node.value:
                if isinstance(k, yaml.ScalarNode) and k.value != "<<":
                    if k.value in seen:
                        dup = k.value
                        break
                    seen.add(k.value)
            if dup is not None:
                raise BenchError(f"{source}:{node.start_mark.line + 1}: key {brief(dup)} appears twice in one "
                                 "mapping; keep one")
        active.add(nid)
        stack.append((node, True))
        stack.extend((k, False) for k in _children(node) if id(k) not in size)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


# -- validating --------------------------------------------------------------------------------------

def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model that holds the last element of an error location (for key suggestions)."""
    model: type[BaseModel] | None = SuiteSpec
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        if model is None or part not in model.model_fields:
            return None
        model = _inner_model(model.model_fields[part].annotation)
    return model


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def _loc_text(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-after[_plain_name(), str]", "constrained-int", "int", "str", "float"):
            continue  # pydantic's internal step names
        else:
            out += ("." if out else "") + str(part)
    return out or "suite"


def validation_line(exc: ValidationError, source: str) -> str:
    """The first pydantic error as one line: where, what, a short view of the value, a suggestion."""
    errors = exc.errors(include_url=False)
    # a misspelt key is both unknown and (for the right one) missing: name the typo, with a suggestion
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = tuple(err["loc"])
    where = _loc_text(loc)
    if err["type"] == "extra_forbidden":
        model = _model_at(loc)
        allowed = list(model.model_fields) if model else []
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"{source}: {where}: unknown key{hint}; allowed here: {', '.join(allowed)}"
    if err["type"] == "missing":
        need = "a suite needs at least name, seeds, datasets and methods" if len(loc) == 1 else "it is required here"
        return f"{source}: {where}: missing; {need}"
    msg = str(err["msg"]).removeprefix("Value error, ")
    return f"{source}: {where}: {msg} (got {brief(err.get('input'))})"


def parse_suite(data: Any, source: str = "<suite>") -> SuiteSpec:
    """A validated suite, or BenchError naming the first problem in one line."""
    if data is None:
        raise BenchError(f"{source}: the suite is empty; it needs keys name, seeds, datasets, methods "
                         "(see suites/default.yaml)")
    if not isinstance(data, dict):
        raise BenchError(f"{source}: a suite must be a YAML mapping with keys name, seeds, datasets, methods "
                         f"(got {brief(data)})")
    try:
        spec = SuiteSpec.model_validate(data)
    except ValidationError as exc:
        raise BenchError(validation_line(exc, source)) from None
    except RecursionError:
        raise BenchError(f"{source}: the suite refers to itself; write plain lists and mappings") from None
    _check_grid(spec, source)
    return spec


def _check_grid(spec: SuiteSpec, source: str) -> None:
    empty = [k for k in ("seeds", "datasets", "methods") if not getattr(spec, k)]
    if empty:
        raise BenchError(f"{source}: the grid is empty ({', '.join(empty)} has no entries); nothing to run")
    for field in ("seeds", "datasets"):
        values = getattr(spec, field)
        if len(set(values)) != len(values):
            dup = next(v for v, n in Counter(values).items() if n > 1)
            raise BenchError(f"{source}: {field} repeat ({brief(dup)} twice); list each once")
    n_trials = 0
    for i, m in enumerate(spec.methods):
        where = f"{source}: methods[{i}] ({m.name})"
        if not m.variants:
            raise BenchError(f"{where}: variants is empty, so nothing would run; list at least one (e.g. "
                             "[default]) or leave the key out")
        if len(set(m.variants)) != len(m.variants):
            raise BenchError(f"{where}: variants repeat; list each once")
        if m.datasets is not None:
            if not m.datasets:
                raise BenchError(f"{where}: datasets is empty, so nothing would run; list some of the suite's "
                                 "datasets or leave the key out")
            stray = [d for d in m.datasets if d not in spec.datasets]
            if stray:
                raise BenchError(f"{where}: datasets {brief(stray[0])} is not one of the suite's datasets "
                                 f"({', '.join(spec.datasets)})")
        stray = [d for d in m.config_by_dataset if d not in spec.datasets]
        if stray:
            raise BenchError(f"{where}: config_by_dataset names {brief(stray[0])}, which is not one of the "
                             f"suite's datasets ({', '.join(spec.datasets)})")
        if m.gpus_per_trial is not None:
            _check_share(m.gpus_per_trial, f"{where}: gpus_per_trial")
        n_trials += len(m.variants) * len(m.datasets or spec.datasets) * len(spec.seeds)
    if spec.resources.gpus_per_trial is not None:
        _check_share(spec.resources.gpus_per_trial, f"{source}: resources.gpus_per_trial")
    if n_trials > MAX_TRIALS:
        raise BenchError(f"{source}: the grid has {n_trials:,} trials, more than the {MAX_TRIALS:,} one suite may "
                         "plan; split it into several suites")
    pairs = [(m.name, v) for m in spec.methods for v in m.variants]
    if len(set(pairs)) != len(pairs):
        raise BenchError(f"{source}: a method and variant is listed twice; list each once (use config to vary it "
                         "in a separate suite)")


def _check_share(v: float, where: str) -> None:
    if v > 1 and not float(v).is_integer():
        raise BenchError(f"{where} = {v:g}: above 1 a GPU share must be a whole number of GPUs (Ray's rule)")


def load_suite(path: str | Path) -> SuiteSpec:
    return parse_suite(read_suite_yaml(path), source=str(path))


# -- checks against this machine (called by the CLI and the runner before anything runs) -----------

def check_gpus(suite: SuiteSpec, gpus_available: float, cpus_available: float | None = None) -> None:
    """Refuse what would never run: ``device: cuda`` or a GPU share where there is no (or not enough) GPU,
    or (scheduled by Ray: ``cpus_available`` given) more CPUs per trial than the machine or cluster has.
    Without this, Ray keeps such trials PENDING forever."""
    cpus = suite.resources.cpus_per_trial
    if cpus_available is not None and cpus > cpus_available:
        raise BenchError(f"suite {suite.name!r}: resources.cpus_per_trial = {cpus:g}, but this machine (or cluster) "
                         f"has {cpus_available:g} CPU(s); lower it (or use --inline, which ignores it)")
    if suite.device == "cuda" and gpus_available <= 0:
        raise BenchError(f"suite {suite.name!r} asks for device: cuda but this machine (or cluster) has no GPU; "
                         "set device: auto or cpu")
    if suite.device == "cpu":
        return
    asked = [("resources.gpus_per_trial", suite.resources.gpus_per_trial)]
    asked += [(f"methods {m.name}: gpus_per_trial", m.gpus_per_trial) for m in suite.methods]
    for where, share in asked:
        if share is not None and share > gpus_available:
            have = "no GPU" if gpus_available <= 0 else f"only {gpus_available:g} GPU(s)"
            raise BenchError(f"suite {suite.name!r}: {where} = {share:g}, but this machine (or cluster) has {have}; "
                             "lower the share, remove it, or set device: cpu")


def check_folder(path: str | Path, flag: str, *, write: bool = True) -> Path:
    """A folder the command may create and write into (or, ``write=False``, read): refuses a path that is a
    file, lies under a file, or cannot be written (permissions or a read-only filesystem). Writes nothing."""
    path = Path(path).expanduser()
    if str(path) == "":
        raise BenchError(f"{flag} is empty; pass a folder")
    probe = path
    while True:
        try:
            st = os.stat(probe)
            break
        except (FileNotFoundError, NotADirectoryError):
            if probe.parent == probe:
                raise BenchError(f"{flag} {path}: no part of the path exists") from None
            probe = probe.parent
        except OSError as exc:
            why = "a symlink loop" if exc.errno == errno.ELOOP else (exc.strerror or type(exc).__name__)
            raise BenchError(f"{flag} {path}: cannot use it ({why}); pass a folder") from None
    if not stat.S_ISDIR(st.st_mode):
        what = "is a file" if probe == path else f"lies under {probe}, which is a file"
        raise BenchError(f"{flag} {path} {what}, not a folder; pass a folder")
    if not write:
        return path
    if not os.access(probe, os.W_OK | os.X_OK) or _read_only_fs(probe) or not _can_create_in(probe):
        where = "" if probe == path else f" (its nearest existing parent {probe})"
        raise BenchError(f"{flag} {path}{where} is not writable (permissions or a read-only filesystem); pass a "
                         "folder you can write")
    return path


def _read_only_fs(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _can_create_in(folder: Path) -> bool:
    """os.access says yes to root everywhere; only trying tells (the probe file is removed at once)."""
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".bench-probe-")
    except OSError:
        return False
    os.close(fd)
    os.unlink(tmp)
    return True


def check_store(path: str | Path, flag: str = "--store", *, write: bool = True) -> Path:
    """The results store and the folders in it that a run writes."""
    root = check_folder(path, flag, write=write)
    for sub in ("records", "runs", "artifacts", "stages", "locks", "attempts"):
        if (root / sub).exists() or (root / sub).is_symlink():
            check_folder(root / sub, f"{flag} (its {sub}/ folder)", write=write)
    return root

