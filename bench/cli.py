"""``bench``: run suites, build reports, list methods and datasets.

    bench run [SUITE] [--inline] [--address ADDR] [--force | --resume [RUN_ID]] [--only M[:VARIANT],...]
              [--datasets D,...] [--seeds S,...] [--dry-run]
    bench report [SUITE] [--run RUN_ID] [--store DIR] [--out DIR]
    bench trial METHOD DATASET [--seed N] [--variant V] [--set key=value ...]
    bench trials [--store DIR]                           (the single trials `bench trial` ran)
    bench stages [--store DIR] [--prune]                 (stored stages and the records that read them)
    bench import SOURCE [--store DIR]                    (merge another store's records and runs into this one)
    bench list [METHOD]
    bench doctor [--store DIR] [--data DIR] [--address ADDR]
    bench audit [--suite SUITE | --run RUN_ID] [--claims DIR] [--store DIR] [--out DIR]
    bench history [SUITE] [--rebuild] [--store DIR]
    bench regress SUITE [--store DIR] [--out DIR]     (exit 1 on a regression)

SUITE is a YAML path or a suite name (``default`` = suites/default.yaml); the store is ``--store``, else
``$BENCH_STORE``, else the user data directory (bench.store.default_store_root). User errors (including bad
arguments) print one line (``error: ...``) and exit 2, before anything is written (the input checks live in
bench.suite); failed trials make ``run`` exit 1; a run cut short by SIGINT / SIGTERM still records what
finished and writes its report, then exits 130 / 143. Start-up imports only argparse and PyYAML here: torch,
Ray, pandas and the methods load inside the command that needs them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from bench.errors import BenchError

SUITES_DIR = Path(__file__).resolve().parent.parent / "suites"
DEFAULT_SUITE = SUITES_DIR / "default.yaml"


def _store(args) -> ResultStore:  # noqa: F821
    from bench.store import ResultStore, default_store_root

    return ResultStore(args.store or default_store_root())


def suite_file(arg: str | None) -> Path:
    """A suite argument as a file: a YAML path, or a name found as suites/<name>.yaml."""
    if not arg:
        return DEFAULT_SUITE
    path = Path(arg)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    named = SUITES_DIR / f"{arg}.yaml"
    if named.exists():
        return named
    known = sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))
    raise BenchError(f"no suite {arg!r}: not a file, and not one of {SUITES_DIR}/*.yaml ({', '.join(known)}); "
                     "pass a suite YAML path or one of these names")


def suite_name(arg: str | None) -> str | None:
    """A suite argument as a name: a YAML path gives the name inside it; anything else is the name."""
    if not arg:
        return None
    path = Path(arg)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        from bench.suite import load_suite

        return load_suite(path).name
    return arg


def _data_root(args) -> Path:
    from bench.data import default_data_root

    return Path(args.data).expanduser().resolve() if args.data else default_data_root()


def _check_data_args(args) -> None:
    from bench.data import default_cache_dir
    from bench.suite import check_folder

    if args.data is not None:
        check_folder(args.data, "--data", write=False)
    check_folder(default_cache_dir(), "the data cache ($BENCH_CACHE)")


def cmd_run(args) -> int:
    from bench.env import check_environment
    from bench.suite import check_folder, check_store, load_suite

    check_environment()
    if args.resume and args.force:
        raise BenchError("--resume continues a run with that run's own --force setting; drop --force")
    narrowed = [flag for flag, given in (("--only", args.only), ("--datasets", args.datasets), ("--seeds", args.seeds))
                if given]
    if args.resume and narrowed:
        raise BenchError(f"--resume continues a run as it was started; drop {narrowed[0]}")
    if isinstance(args.resume, str) and not args.suite:  # `bench run --resume RUN_ID`: the run names its suite
        suite, path = resumed_suite(_store(args), args.resume)
    else:
        path = suite_file(args.suite)
        suite = load_suite(path)  # a malformed suite stops here, before torch or Ray are imported
    only = only_methods(suite, args.only) if args.only else None
    datasets = only_datasets(suite, args.datasets) if args.datasets else None
    seeds = only_seeds(suite, args.seeds) if args.seeds else None
    store = _store(args)  # (bench.store imports torch: only after the suite passed its checks)
    check_store(store.root, write=not args.dry_run)
    if not args.no_report and not args.dry_run:
        check_folder(args.out, "--out")
    _check_data_args(args)
    if args.dry_run:
        return _dry_run(suite, args, only, datasets, seeds)
    from bench.runner import exit_code_for, run_suite, trap_signals

    # A signal before the run starts aborts it (nothing is written); during the run, run_suite records it;
    # after the run (report), it is noted and the report still completes. Any of them sets the exit code.
    received: list[str] = []
    with trap_signals(received) as trap:
        try:
            manifest = run_suite(suite, store=store, data_root=_data_root(args), inline=args.inline,
                                 address=args.address, force=args.force, suite_path=str(path), resume=args.resume,
                                 only=only, datasets=datasets, seeds=seeds)
        except KeyboardInterrupt:
            name = received[0] if received else "SIGINT"
            print(f"{name} before the run started: nothing was run", file=sys.stderr)
            return 128 + int(signal.Signals[name])
        trap.disarm()
        statuses = [t["status"] for t in manifest["trials"]]
        n_bad = sum(s not in ("ok", "reused") for s in statuses)
        print(f"run {manifest['run_id']}: {statuses.count('ok')} ok, {statuses.count('reused')} reused, {n_bad} "
              f"failed or interrupted; records in {store.records_dir}")
        if not args.no_report:
            _report_suite(store, suite, Path(args.out) / suite.name)
        if getattr(args, "command_line", False):  # leaving the block installs _exit_now, with no gap between
            trap.previous = dict.fromkeys(trap.previous, _exit_now)
    late = 128 + int(signal.Signals[received[0]]) if received else None
    return exit_code_for(manifest) or late or (1 if n_bad else 0)


def _exit_now(signum, frame) -> None:
    """After `bench run` has written everything: a signal during interpreter teardown exits 128 + signum."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(128 + signum)


def resumed_suite(store, run_id: str):
    """The suite of a stored run (its manifest keeps the resolved spec), and the file it came from."""
    from bench.suite import parse_suite

    man = next((m for m in store.runs() if m["run_id"] == run_id), None)
    if man is None:
        raise BenchError(f"--resume {run_id}: no such run in {store.runs_dir}")
    return parse_suite(man["spec"], f"run {run_id}"), Path(man.get("suite_path") or f"run {run_id}")


def _dry_run(suite, args, only: set[str] | None = None, datasets: set[str] | None = None,
             seeds: set[int] | None = None) -> int:
    """Plan as `bench run` would (every name, config, data file and resource checked), print it, write nothing."""
    from bench.plan import plan_suite
    from bench.runner import _gpu_count
    from bench.suite import check_gpus

    if args.address:
        raise BenchError("--dry-run plans on this machine; leave out --address")
    force, run_id = args.force, None
    if args.resume:  # plan what the resume would run: that run's narrowing, force and finished trials
        from bench.provenance import code_version
        from bench.runner import resumable_run, resumed_scope

        prev = resumable_run(_store(args), suite.name, None if args.resume is True else args.resume, code_version())
        (force, only, datasets, seeds), run_id = resumed_scope(prev), prev["run_id"]
    gpus = _gpu_count(None)
    check_gpus(suite, gpus)
    plan = plan_suite(suite, _store(args), _data_root(args), force=force, gpus_available=gpus, only=only,
                      datasets=datasets, seeds=seeds, run_id=run_id)
    n_seeds = sum(len(u.seeds) for u in plan.units)
    print(f"dry run of suite {suite.name!r}: {n_seeds} trial(s) in {len(plan.units)} unit(s) to run, "
          f"{len(plan.skipped)} reused from {_store(args).root}; nothing was run or written")
    for su in plan.stage_units[:50]:
        print(f"  stage {su.name} on {su.dataset}, seeds {su.seeds} (built first, shared by the trials that read it)")
    for u in plan.units[:50]:
        print(f"  {u.method}/{u.variant} on {u.dataset}, seeds {u.seeds}, {u.cpus:g} CPU, {u.gpus:g} GPU")
    if len(plan.units) > 50:
        print(f"  ... and {len(plan.units) - 50} more unit(s)")
    return 0


def _listed(items: list[str]) -> list[str]:
    """The names of a repeatable comma-list option (``--only a,b --only c``), blanks dropped."""
    return [n.strip() for item in items for n in item.split(",") if n.strip()]


def only_methods(suite, names: list[str]) -> set[str]:
    """The methods named by ``--only dec,idec`` (repeatable), or one variant of a method as
    ``--only deepcluster:overcluster``, checked against the suite. Trial keys do not depend on the suite, so a
    later full run reuses what a restricted run stored."""
    wanted = set(_listed(names))
    if not wanted:
        raise BenchError("--only names no method; pass method names of the suite, e.g. --only dec,idec")
    present = [m.name for m in suite.methods]
    unknown = sorted(w for w in wanted if w.partition(":")[0] not in present)
    if unknown:
        raise BenchError(f"--only {', '.join(unknown)}: not a method of suite {suite.name!r} "
                         f"(it has {', '.join(dict.fromkeys(present))})")
    for w in sorted(w for w in wanted if ":" in w):
        method, _, variant = w.partition(":")
        variants = [v for m in suite.methods if m.name == method for v in m.variants]
        if variant not in variants:
            raise BenchError(f"--only {w}: {method!r} has no variant {variant!r} in suite {suite.name!r} "
                             f"(it runs {', '.join(dict.fromkeys(variants))}); pass METHOD or METHOD:VARIANT")
    return wanted


def only_datasets(suite, names: list[str]) -> set[str]:
    """The datasets named by ``--datasets mnist,usps`` (repeatable), checked against the suite."""
    wanted = set(_listed(names))
    if not wanted:
        raise BenchError("--datasets names no dataset; pass dataset names of the suite, e.g. --datasets mnist")
    unknown = sorted(wanted - set(suite.datasets))
    if unknown:
        raise BenchError(f"--datasets {', '.join(unknown)}: not a dataset of suite {suite.name!r} "
                         f"(it has {', '.join(suite.datasets)})")
    return wanted


def only_seeds(suite, items: list[str]) -> set[int]:
    """The seeds named by ``--seeds 1,2`` (repeatable), checked against the suite: a seed outside it would
    write records that no report of the suite shows."""
    names = _listed(items)
    if not names:
        raise BenchError("--seeds names no seed; pass seeds of the suite, e.g. --seeds 1")
    bad = [n for n in names if not (n.isascii() and n.isdigit())]  # int() refuses some isdigit() characters
    if bad:
        raise BenchError(f"--seeds {', '.join(bad)}: a seed is a whole number >= 0, e.g. --seeds 0,1")
    wanted = {int(n) for n in names}
    unknown = sorted(wanted - set(suite.seeds))
    if unknown:
        shown = ", ".join(map(str, suite.seeds[:12])) + (", ..." if len(suite.seeds) > 12 else "")
        raise BenchError(f"--seeds {', '.join(map(str, unknown))}: not a seed of suite {suite.name!r} (it has {shown})")
    return wanted


def _print_report(paths: dict[str, Path]) -> None:
    print(f"report: {paths['markdown']} (table), {paths['plot']} (plot), {paths['latex']} (LaTeX), "
          f"{paths['csv']} (per-seed CSV)")
    md = paths["markdown"].read_text().split("\n")
    print("\n".join(line for line in md if line.startswith("|")))


def _report_suite(store, suite, out_dir: Path) -> None:
    """The store's view of the suite (bench.view): every trial of its grid, newest finished record."""
    from bench.report import write_report
    from bench.view import missing_summary, suite_view

    view = suite_view(store, suite)
    specs = [t.model_dump() for t in suite.tables] or None
    note = (f"The store's view of suite {suite.name!r} in {store.root}: for each of the grid's "
            f"{len(view.records) + len(view.missing)} trials, the newest finished record, whichever run wrote it "
            f"(runs: {', '.join(view.run_ids) or 'none'}).")
    if view.missing:
        note += f" {len(view.missing)} trial(s) have no record yet: {missing_summary(view.missing)}."
    damaged = _damaged_note(store)
    if damaged:  # in the report too: a trial listed as missing may be one whose record file is damaged
        note += f" {damaged}."
    paths = write_report(view.records, out_dir, title=f"Suite {suite.name}", tables=specs, note=note)
    if view.missing:
        print(f"{len(view.missing)} trial(s) of the grid have no record yet (`bench run` runs them)")
    _warn_damaged(store)
    _print_report(paths)


def _damaged_note(store) -> str:
    bad = store.damaged_now()
    if not bad:
        return ""
    names = ", ".join(p.name for p in bad[:3]) + (f" (+{len(bad) - 3})" if len(bad) > 3 else "")
    return (f"{len(bad)} record file(s) in {store.records_dir} are damaged or unreadable and were skipped: {names} "
            "(`bench run` re-runs their trials and keeps the damaged files aside)")


def _warn_damaged(store) -> None:
    """Say which record files were skipped: a byte flipped in a record is a clear skip, not a silent gap."""
    if note := _damaged_note(store):
        print(f"warning: {note}", file=sys.stderr)


def cmd_report(args) -> int:
    from bench.suite import check_folder, check_store, parse_suite

    check_store(_store(args).root, write=False)
    check_folder(args.out, "--out")
    store = _store(args)
    if args.run:
        manifest = next((m for m in store.runs() if m["run_id"] == args.run), None)
        if manifest is None:
            raise BenchError(f"no run {args.run!r} in {store.runs_dir}; `bench report` without --run shows the "
                             "store's view of the suite")
        return _report_run(store, manifest, Path(args.out))
    arg = args.suite
    if arg and (Path(arg).suffix in (".yaml", ".yml") or Path(arg).is_file()):
        from bench.suite import load_suite

        suite = load_suite(arg)
    else:  # a name: the suite as its latest run stored it (the whole suite, also after --only)
        manifest = _latest_suite_run(store, arg)
        if manifest is None and arg and (SUITES_DIR / f"{arg}.yaml").exists():
            from bench.suite import load_suite

            suite = load_suite(SUITES_DIR / f"{arg}.yaml")
        elif manifest is None:
            which = f"suite {arg!r}" if arg else "any suite"
            raise BenchError(f"no stored run of {which} in {store.root}; run `bench run SUITE` first")
        elif "spec" not in manifest:  # a run stored without its suite's spec: that run as it left it
            return _report_run(store, manifest, Path(args.out))
        else:
            suite = parse_suite(manifest["spec"], f"the spec stored with run {manifest['run_id']}")
    _report_suite(store, suite, Path(args.out) / suite.name)
    return 0


def _report_run(store, manifest: dict[str, Any], out: Path) -> int:
    """One run's records as that run left them (`bench report --run RUN_ID`)."""
    from bench.history import records_as_of_run
    from bench.report import write_report

    tables = (manifest.get("spec") or {}).get("tables") or None
    paths = write_report(records_as_of_run(store, manifest), out / manifest["suite"],
                         title=f"Suite {manifest['suite']}, run {manifest['run_id']}", tables=tables, run=manifest)
    _warn_damaged(store)
    _print_report(paths)
    return 0


def _latest_suite_run(store, name: str | None) -> dict[str, Any] | None:
    runs = [m for m in store.runs(name) if not _is_trial(m)]
    return runs[-1] if runs else None


def _is_trial(manifest: dict[str, Any]) -> bool:
    # runs written before "kind" existed: `bench trial` named its suite trial-<method>
    return manifest.get("kind") == "trial" or (manifest.get("kind") is None
                                               and str(manifest.get("suite", "")).startswith("trial-"))


def parse_set(items: list[str]) -> dict[str, Any]:
    """`--set key=value` pairs, values read as YAML (numbers, lists, booleans)."""
    from bench.errors import brief
    from bench.suite import safe_yaml

    out = {}
    for item in items:
        if "=" not in item:
            raise BenchError(f"--set expects key=value, got {brief(item)}")
        key, val = item.split("=", 1)
        if not key.strip():
            raise BenchError(f"--set {brief(item)}: the key is empty; write key=value")
        out[key.strip()] = safe_yaml(val, f"--set {key.strip()[:40]}")
    return out


def cmd_trial(args) -> int:
    """One trial inline, for debugging: same planning and records as `bench run`."""
    from bench.env import check_environment
    from bench.suite import check_name, check_store, parse_suite

    check_environment()
    check_name(args.method, "method")
    check_name(args.dataset, "dataset")
    check_name(args.variant, "--variant")
    suite = parse_suite({"name": f"trial-{args.method}"[:64], "seeds": [args.seed], "datasets": [args.dataset],
                         "methods": [{"name": args.method, "variants": [args.variant],
                                      "config": parse_set(args.set)}], "device": args.device}, "command line")
    check_store(_store(args).root)
    _check_data_args(args)
    from bench.runner import run_suite

    store = _store(args)
    manifest = run_suite(suite, store=store, data_root=_data_root(args), inline=True, force=args.force,
                         kind="trial")
    for t in manifest["trials"]:
        print(json.dumps({k: t.get(k) for k in ("method", "variant", "dataset", "seed", "status", "metrics",
                                                  "error", "key")}))
    return 0 if all(t["status"] in ("ok", "reused") for t in manifest["trials"]) else 1


def cmd_trials(args) -> int:
    """The single trials `bench trial` ran: their own listing, not a pseudo-suite in reports or history."""
    store = _store(args)
    runs = [m for m in store.runs() if _is_trial(m)]
    if not runs:
        print(f"no single trials in {store.root} (`bench trial METHOD DATASET` runs one)")
        return 0
    print(f"Single trials in {store.root} ({len(runs)} run(s) of `bench trial`), oldest first:\n")
    print("| run | method | dataset | seed | status | ACC | NMI | ARI | config | error |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for m in runs:
        spec_methods = (m.get("spec") or {}).get("methods") or [{}]
        overrides = spec_methods[0].get("config") or {}
        for t in m.get("trials", []):
            met = t.get("metrics") or {}
            cells = [f"{100 * met[k]:.1f}" if k in met else "–" for k in ("acc", "nmi", "ari")]
            label = t["method"] + ("" if t.get("variant", "default") == "default" else f" [{t['variant']}]")
            cfg = ", ".join(f"{k}={v}" for k, v in overrides.items()) or "defaults"
            print(f"| {m['run_id']} | {label} | {t['dataset']} | {t['seed']} | {t.get('status')} | "
                  + " | ".join(cells) + f" | {cfg} | {t.get('error') or ''} |")
    return 0


def cmd_import(args) -> int:
    """Merge another store's records, artifacts and run manifests into this one under the store's promise."""
    from bench.store import ResultStore
    from bench.suite import check_folder, check_store

    src_root = check_folder(args.source, "SOURCE", write=False)
    if not src_root.exists() or not ((src_root / "records").is_dir() or (src_root / "runs").is_dir()):
        raise BenchError(f"SOURCE {src_root} is not a results store (no records/ or runs/ folder in it); pass the "
                         "folder another `bench run --store` wrote")
    dst = _store(args)
    if dst.root.exists() and os.path.samefile(dst.root, src_root):
        raise BenchError(f"SOURCE {src_root} is the store itself; pass another store (the destination is --store)")
    check_store(dst.root, write=True)
    src = ResultStore(src_root)
    got = dst.import_from(src)
    for path in got["damaged"]:
        print(f"warning: skipped {path}: its bytes changed since it was written (not imported)", file=sys.stderr)
    for why in got["refused"]:
        print(f"warning: skipped {why}", file=sys.stderr)
    print(f"imported from {src_root} into {dst.root}: {got['new']} new record(s), {got['replaced']} replacing a worse "
          f"or older one, {got['kept']} kept as they were (this store's is better, or as good and newer), "
          f"{got['identical']} identical, {len(got['damaged'])} damaged skipped, {got['busy']} skipped because a run "
          f"is computing them now (import again later); {got['runs']} run manifest(s) added")
    return 1 if got["damaged"] or got["busy"] or got["refused"] else 0


def cmd_stages(args) -> int:
    """The stored stages (bench.stages) and the records that read them; ``--prune`` removes what nothing uses."""
    from bench.stages import StageStore
    from bench.suite import check_store

    store = _store(args)
    if not store.root.exists() and not store.root.is_symlink():
        raise BenchError(f"--store {store.root} does not exist; pass the store `bench run` wrote (`bench doctor` "
                         "prints the default)")
    check_store(store.root, write=args.prune)
    stages = StageStore(store.stage_dir)
    # stages first, then runs, then records: a stage listed here was built by a run whose manifest (written before
    # its builds) is read below, or it is in that run's records. Listed last, a run that started while the records
    # were read (seconds, on a big store) had its fresh stage pruned before its trials could read it.
    entries = stages.entries()
    # runs before records: a run finishing in between has written its records before its manifest says so
    live = _stages_of_unfinished_runs(store)
    used: dict[str, list[str]] = {}
    for rec in store.records():
        for u in rec.stages:
            used.setdefault(u["key"], []).append(f"{rec.method}/{rec.dataset}/s{rec.seed}")
    _warn_damaged(store)  # their stages count as unused: say so before pruning or listing
    if args.prune:
        removed, n_stages = stages.prune(keep=set(used) | live, entries=entries)
        for line, _ in removed:
            print(f"removed {line}")
        print(f"pruned {n_stages} unused stage(s) and {len(removed) - n_stages} leftover(s), "
              f"{_size(sum(size for _, size in removed))} freed; kept {len(entries) - n_stages} stage(s) that records "
              "or running runs use")
        return 0
    if not entries:
        print(f"no stages in {stages.root}")
        return 0
    print(f"Stages in {stages.root} ({len(entries)}, {_size(sum(e.get('size_bytes', 0) for e in entries))}), "
          "oldest first:\n")
    print("| stage | key | version | dataset | seed | size | created | built for | used by |")
    print("|---|---|---|---|---|---|---|---|---|")
    for e in entries:
        users = used.get(e["key"], [])
        shown = ", ".join(users[:4]) + (f" (+{len(users) - 4})" if len(users) > 4 else "") if users else \
            ("a running run" if e["key"] in live else "nothing (prunable)")
        print(f"| {e['name']} | {e['key']} | {e.get('version')} | {e.get('dataset')} | {e.get('seed')} | "
              f"{_size(e.get('size_bytes', 0))} | {e.get('created_at')} | {e.get('run_id') or '–'} | {shown} |")
    return 0


def _stages_of_unfinished_runs(store) -> set[str]:
    """Keys of every stage (upstream included) that the trials of a running or resumable run read, built or not:
    not yet in a record, still wanted (prune keeps them and their partial builds). Recomputed from the trials'
    configs, since a run's manifest lists only the stages it had to build, not those it found stored."""
    from bench.method import split_id
    from bench.registry import get_method
    from bench.runner import unfinished_runs
    from bench.stages import walk
    from bench.store import driver_alive

    runs = store.runs()
    wanted = [m for m in runs if m.get("status") == "running" and driver_alive(m.get("driver")) is not False]
    for suite in {m.get("suite") for m in runs}:  # resumable: unfinished since the suite's latest finished run
        wanted += [m for m, _ in unfinished_runs(store, suite)]
    live: set[str] = set()
    for man in wanted:
        live |= {st["key"] for st in man.get("stages", [])}
        for t in man.get("trials", []):
            try:
                cls = get_method(t["method"])
                requests = walk(cls.stages(cls.Config.model_validate(t["config"])))
                split = split_id(t["protocol"]["train_split"], t["protocol"].get("max_images"))
                live |= {r.key(t["data_md5"], split, t["seed"]) for r in requests}
            except Exception:  # noqa: BLE001 - a method or config this code no longer has: its stages are unknown
                continue
    return live


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def cmd_doctor(args) -> int:
    from bench.doctor import run_checks

    return run_checks(_store(args), _data_root(args), address=args.address)


def cmd_list(args) -> int:
    from bench.data import DATASETS
    from bench.registry import describe_method, get_method, method_names

    if args.method:
        print(describe_method(args.method))
        return 0
    print("methods:")
    for name in method_names():
        cls = get_method(name)
        print(f"  {name:12s} {cls.paper}  (variants: {', '.join(cls.variants)})")
    print("datasets:")
    for name, spec in sorted(DATASETS.items()):
        print(f"  {name:14s} {spec.description}")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument as one BenchError line (exit 2) instead of usage + message."""

    def error(self, message: str):
        raise BenchError(f"{self.prog}: {message}; `{self.prog} --help` lists the arguments")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="bench", description="Reproducibility harness for deep image clustering.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp, data=True):
        sp.add_argument("--store", default=None, help="results store folder (default: $BENCH_STORE, else the "
                                                      "user data dir; `bench doctor` prints it)")
        if data:
            sp.add_argument("--data", default=None, help="data root (default: $BENCH_DATA or ./data)")

    r = sub.add_parser("run", help="run a suite (methods x variants x datasets x seeds)")
    r.add_argument("suite", nargs="?", help="suite YAML or name in suites/ (default: default, k-means and DEC on "
                                            "digits)")
    r.add_argument("--inline", action="store_true", help="run trials one by one in this process, without Ray")
    r.add_argument("--address", help="join an existing Ray cluster (e.g. auto or ray://head:10001)")
    r.add_argument("--force", action="store_true", help="re-run trials even if an identical one is stored")
    r.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN_ID",
                   help="continue an unfinished run (default: the suite's latest): finished trials are not rerun, "
                        "unfinished ones restart from their last checkpoint")
    r.add_argument("--only", action="append", default=[], metavar="METHOD[:VARIANT][,...]",
                   help="run only these methods (or one variant: METHOD:VARIANT) of the suite (a later full run "
                        "reuses their records)")
    r.add_argument("--datasets", action="append", default=[], metavar="DATASET[,DATASET]",
                   help="run only these datasets of the suite (combines with --only)")
    r.add_argument("--seeds", action="append", default=[], metavar="SEED[,SEED]",
                   help="run only these seeds of the suite (combines with --only and --datasets); the report "
                        "still shows the whole suite")
    r.add_argument("--out", default="reports", help="where the report goes (default: reports/)")
    r.add_argument("--no-report", action="store_true")
    r.add_argument("--dry-run", action="store_true",
                   help="check and plan everything (names, configs, data md5s, resources), print the plan, "
                        "write nothing")
    common(r)
    r.set_defaults(func=cmd_run)

    rp = sub.add_parser("report", help="tables and plots from stored results")
    rp.add_argument("suite", nargs="?", help="suite name or YAML file (default: the suite of the latest run); "
                                             "shows each trial's newest finished record, whichever run wrote it")
    rp.add_argument("--run", help="one run's records only (run ids: STORE/runs/, `bench history`)")
    rp.add_argument("--out", default="reports")
    common(rp, data=False)
    rp.set_defaults(func=cmd_report)

    t = sub.add_parser("trial", help="run one trial inline (debugging)")
    t.add_argument("method")
    t.add_argument("dataset")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--variant", default="default")
    t.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    t.add_argument("--force", action="store_true")
    common(t)
    t.set_defaults(func=cmd_trial)

    ts = sub.add_parser("trials", help="list the single trials `bench trial` ran")
    common(ts, data=False)
    ts.set_defaults(func=cmd_trials)

    sg = sub.add_parser("stages", help="list the stored stages (pretrained networks, neighbours) and their users")
    sg.add_argument("--prune", action="store_true", help="remove stages no record uses (and partial builds)")
    common(sg, data=False)
    sg.set_defaults(func=cmd_stages)

    im = sub.add_parser("import", help="merge another store's records and runs into this one (a finished record is "
                                       "never replaced by a worse or older one)")
    im.add_argument("source", help="the other store's folder (e.g. copied from another machine)")
    common(im, data=False)
    im.set_defaults(func=cmd_import)

    d = sub.add_parser("doctor", help="check what a run needs: GPU, data, store, disk, Ray cluster")
    d.add_argument("--address", help="also check that this Ray cluster is reachable (e.g. auto)")
    common(d)
    d.set_defaults(func=cmd_doctor)

    ls = sub.add_parser("list", help="methods and datasets, or one method's config")
    ls.add_argument("method", nargs="?")
    ls.set_defaults(func=cmd_list)
    _add_audit_history_regress(sub, common)
    return p


# -- claims audit, results history, nightly regression (bench.audit, bench.history, bench.regress) ------
def cmd_audit(args) -> int:
    from bench.audit import audit, markdown, write_audit
    from bench.claims import load_claims
    from bench.suite import check_folder, check_store

    check_store(_store(args).root, write=False)
    check_folder(args.out, "--out")
    claims = load_claims(args.claims)
    store = _store(args)
    if args.run:
        manifest = next((m for m in store.runs() if m["run_id"] == args.run), None)
        if manifest is None:
            raise BenchError(f"no run {args.run!r} in {store.runs_dir}; `bench history` lists the runs")
        from bench.history import records_as_of_run

        records = records_as_of_run(store, manifest)
        print(f"audit of the records of run {args.run} (as that run left them)")
    elif args.suite:
        from bench.suite import load_suite
        from bench.view import suite_view

        suite = load_suite(suite_file(args.suite))
        records = suite_view(store, suite).records
        print(f"audit of the store's view of suite {suite.name!r} (newest finished record per trial)")
    else:
        records = list(store.records())
    _warn_damaged(store)
    rows = audit(claims, records)
    paths = write_audit(rows, records, Path(args.out))
    print(markdown(rows))
    print(f"\naudit: {paths['markdown']}, {paths['latex']}, {paths['csv']}, {paths['scatter']}"
          + (f", {paths['curves']}" if "curves" in paths else ""))
    return 0


def cmd_history(args) -> int:
    from bench.history import history_table

    _check_history_args(args)
    with _history_db_errors(args):
        print(history_table(_store(args), suite_name(args.suite), args.db, rebuild=args.rebuild))
    return 0


@contextlib.contextmanager
def _history_db_errors(args):
    """A damaged history database (flipped bytes, truncated, a folder) was an sqlite3 traceback from `bench history`
    and `bench regress`: one line now, with the way out (the database is rebuilt from the store's JSON)."""
    import sqlite3

    from bench.history import damaged, default_db_path

    try:
        yield
    except sqlite3.DatabaseError as exc:
        db = args.db or default_db_path(_store(args))
        if damaged(exc) is None:
            raise BenchError(f"history database {db} is busy ({exc}); try again when the other process is done") \
                from None
        raise BenchError(f"history database {db} is damaged ({exc}); `bench history --rebuild` keeps it aside and "
                         "rebuilds it from runs/ and records/") from None


def cmd_regress(args) -> int:
    from bench.regress import regress_suite
    from bench.suite import check_folder, check_name

    name = suite_name(args.suite)
    check_name(name, "suite")
    if not 1 <= args.window <= 100_000:
        raise BenchError(f"--window {args.window}: compare with 1 to 100000 previous runs")
    _check_history_args(args)
    check_folder(args.out, "--out")
    out = Path(args.out) / name
    with _history_db_errors(args):
        code, md = regress_suite(_store(args), name, out_dir=out, db_path=args.db, window=args.window)
    print(md)
    print(f"summary: {out / 'regress.md'}; trend plots: {out}/trend_*.png")
    return code


def _check_history_args(args) -> None:
    """The store (it holds history.db unless --db says otherwise) and the --db file."""
    from bench.suite import check_folder, check_store

    check_store(_store(args).root, write=args.db is None)
    if args.db is not None:
        db = Path(args.db).expanduser()
        if db.is_dir():
            raise BenchError(f"--db {db} is a folder; pass a database file path (e.g. results/history.db)")
        check_folder(db.parent if str(db.parent) else ".", "--db's folder")


def _add_audit_history_regress(sub, common) -> None:
    a = sub.add_parser("audit", help="papers' claims (claims/*.yaml) vs reproduced results of the same protocol")
    a.add_argument("--claims", default=None, help="claims folder or file (default: the repo's claims/)")
    which = a.add_mutually_exclusive_group()
    which.add_argument("--suite", help="judge only this suite's records (name or YAML; its store view)")
    which.add_argument("--run", help="judge only the records of this run")
    a.add_argument("--out", default="reports/audit", help="where audit.md/.tex/.csv and plots go")
    common(a, data=False)
    a.set_defaults(func=cmd_audit)

    h = sub.add_parser("history", help="list the stored runs of a suite (history database)")
    h.add_argument("suite", nargs="?", help="suite name or YAML (default: all suites)")
    h.add_argument("--db", default=None, help="history database (default: STORE/history.db)")
    h.add_argument("--rebuild", action="store_true", help="re-import every runs/*.json manifest from scratch")
    common(h, data=False)
    h.set_defaults(func=cmd_history)

    g = sub.add_parser("regress", help="latest run of a suite vs its history; exit 1 on a regression")
    g.add_argument("suite", help="suite name or YAML")
    g.add_argument("--db", default=None, help="history database (default: STORE/history.db)")
    g.add_argument("--window", type=int, default=30, help="previous runs compared (default: 30)")
    g.add_argument("--out", default="reports/regress", help="regress.md and trend plots go to OUT/SUITE/")
    common(g, data=False)
    g.set_defaults(func=cmd_regress)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    args.command_line = argv is None  # the `bench` command itself, not a caller's process: see _exit_now
    try:
        return int(args.func(args) or 0)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
