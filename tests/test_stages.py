"""Stages (bench.stages): keys, sharing, upstream order, integrity, concurrency, failures."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from pathlib import Path

import pytest
import torch
from pydantic import Field, ValidationError

from bench.context import TrialContext
from bench.method import ClusteringData
from bench.stages import Stage, StageConfig, StageRequest, StageStore, register_stage


@register_stage
class ProbeStage(Stage):
    """Writes one line per build to ``log`` (so tests count builds), returns a tensor that depends on the seed."""

    name = "test_probe"
    version = 1

    class Config(StageConfig):
        log: str = ""
        width: int = Field(3, ge=1)
        sleep_s: float = 0.0
        fail_seed: int = -1

    def build(self, data, inputs, ctx):
        if self.config.log:
            with open(self.config.log, "a") as fh:
                fh.write(f"{self.name} seed={ctx.seed} pid={os.getpid()}\n")
        time.sleep(self.config.sleep_s)
        if ctx.seed == self.config.fail_seed:
            raise ValueError(f"probe refuses seed {ctx.seed}")
        return {"w": torch.randn(self.config.width, generator=ctx.rng("probe")), "n": int(data.x_train.shape[0])}


@register_stage
class ProbeChild(Stage):
    """Reads ``probe`` upstream: its artifact is the upstream tensor doubled."""

    name = "test_probe_child"
    version = 1

    class Config(StageConfig):
        log: str = ""

    def build(self, data, inputs, ctx):
        if self.config.log:
            with open(self.config.log, "a") as fh:
                fh.write(f"{self.name} seed={ctx.seed}\n")
        return {"w2": inputs["probe"]["w"] * 2}


def _data(md5: str = "md5-a") -> ClusteringData:
    x = torch.zeros(7, 1, 2, 2, dtype=torch.uint8)
    return ClusteringData("synthetic", x, x, 2, "all", "all", md5)


def _ctx(root: Path, seed: int = 0, key: str | None = None, run_id: str | None = None,
         requests: dict | None = None, md5: str = "md5-a") -> TrialContext:
    ctx = TrialContext(seed=seed, device="cpu", artifact_dir=root / "art" / str(seed), stage_dir=root / "stages",
                       data_md5=md5, code_version="whatever", key=key, run_id=run_id)
    return ctx.bind(_data(md5), requests or {})


def _builds(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_key_depends_on_what_the_stage_computes_and_not_on_the_commit(tmp_path):
    req = StageRequest("test_probe", ProbeStage.Config())
    base = req.key("m", "all", 0)
    assert req.key("m", "all", 0) == base  # stable
    assert len({base, req.key("m2", "all", 0), req.key("m", "train", 0), req.key("m", "all", 1),
                StageRequest("test_probe", ProbeStage.Config(width=4)).key("m", "all", 0)}) == 5
    child = StageRequest("test_probe_child", ProbeChild.Config(), {"probe": req})
    other_child = StageRequest("test_probe_child", ProbeChild.Config(),
                               {"probe": StageRequest("test_probe", ProbeStage.Config(width=4))})
    assert child.key("m", "all", 0) != other_child.key("m", "all", 0)  # upstream keys are part of the key
    # two code versions of the trial, same stage version: same key; the stage's own version bump: a new key
    c1, c2 = _ctx(tmp_path / "a"), _ctx(tmp_path / "a")
    c2.code_version = "another-commit"
    w1 = c1.bind(_data(), {"p": req}).stage("p")["w"]
    assert torch.equal(w1, c2.bind(_data(), {"p": req}).stage("p")["w"])
    assert c2.stages_used[0]["reused"] is True
    ProbeStage.version = 2
    try:
        assert req.key("m", "all", 0) != base
    finally:
        ProbeStage.version = 1


def test_config_is_typed_and_frozen():
    with pytest.raises(ValidationError):
        ProbeStage.Config(widht=3)  # typo: unknown key
    with pytest.raises(ValidationError):
        ProbeStage.Config(width=0)
    cfg = ProbeStage.Config()
    with pytest.raises(ValidationError):
        cfg.width = 5
    with pytest.raises(TypeError):
        StageRequest("test_probe", ProbeChild.Config())  # another stage's config


def test_upstream_is_built_first_once_and_reused_by_the_next_trial(tmp_path):
    log = tmp_path / "log.txt"
    probe = StageRequest("test_probe", ProbeStage.Config(log=str(log)))
    child = StageRequest("test_probe_child", ProbeChild.Config(log=str(log)), {"probe": probe})
    reqs = {"probe": probe, "child": child}
    c1 = _ctx(tmp_path, key="trial-1", run_id="r1", requests=reqs)
    out = c1.stage("child")
    assert _builds(log) == [f"test_probe seed=0 pid={os.getpid()}", "test_probe_child seed=0"]
    assert torch.equal(out["w2"], c1.stage("probe")["w"] * 2)
    assert [(u["name"], u["reused"]) for u in c1.stages_used] == [("test_probe", False), ("test_probe_child", False)]
    c2 = _ctx(tmp_path, key="trial-2", run_id="r1", requests=reqs)  # another trial (another method) of the run
    assert torch.equal(c2.stage("child")["w2"], out["w2"])
    assert len(_builds(log)) == 2  # nothing built again
    assert all(u["reused"] for u in c2.stages_used)
    # what the store lists: name, key, size, the run and trial it was built for
    entries = StageStore(tmp_path / "stages").entries()
    assert {e["name"] for e in entries} == {"test_probe", "test_probe_child"}
    assert all(e["run_id"] == "r1" and e["owner"] == "trial-1" and e["size_bytes"] > 0 for e in entries)
    child_meta = next(e for e in entries if e["name"] == "test_probe_child")
    assert child_meta["upstream"] == {"probe": c1.stages_used[0]["key"]}


def test_a_flipped_byte_in_a_stored_stage_is_detected_and_rebuilt(tmp_path):
    log = tmp_path / "log.txt"
    req = {"p": StageRequest("test_probe", ProbeStage.Config(log=str(log)))}
    first = _ctx(tmp_path, requests=req).stage("p")
    art = next((tmp_path / "stages" / "test_probe").glob("*/artifact.pt"))
    blob = bytearray(art.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    art.write_bytes(bytes(blob))
    again = _ctx(tmp_path, requests=req).stage("p")
    assert len(_builds(log)) == 2  # rebuilt, not read
    assert torch.equal(first["w"], again["w"])  # same stream: the rebuild gives the same artifact
    assert len(list((tmp_path / "stages" / "test_probe").glob(".corrupt-*"))) == 1  # kept aside for a look


def test_a_failed_seed_fails_alone_and_stores_nothing(tmp_path):
    req = {"p": StageRequest("test_probe", ProbeStage.Config(fail_seed=1))}
    ctxs = [_ctx(tmp_path, seed=s, requests=req) for s in (0, 1, 2)]
    outs = TrialContext.batch_stage(ctxs, "p")
    assert isinstance(outs[1], ValueError) and ctxs[1].failure is outs[1]
    assert ctxs[0].failure is None and ctxs[2].failure is None
    assert not torch.equal(outs[0]["w"], outs[2]["w"])  # each seed its own stream
    assert len(StageStore(tmp_path / "stages").entries()) == 2
    with pytest.raises(ValueError, match="refuses seed 1"):
        _ctx(tmp_path, seed=1, requests=req).stage("p")


def _build_in_process(args):
    root, log = args
    req = {"p": StageRequest("test_probe", ProbeStage.Config(log=log, sleep_s=0.5))}
    return _ctx(Path(root), requests=req).stage("p")["w"].tolist()


def test_concurrent_trials_build_a_stage_once(tmp_path):
    log = tmp_path / "builds.txt"
    with mp.get_context("spawn").Pool(3) as pool:
        outs = pool.map(_build_in_process, [(str(tmp_path / "st"), str(log))] * 3)
    assert outs[0] == outs[1] == outs[2]
    assert len(_builds(log)) == 1
    stage_root = tmp_path / "st" / "stages" / "test_probe"
    assert [p.name.startswith(".") for p in stage_root.iterdir()] == [False]  # no temporaries left


def test_asking_for_an_undeclared_stage_says_so(tmp_path):
    with pytest.raises(KeyError, match="declare it"):
        _ctx(tmp_path).stage("nope")


# -- the planner: one build per stage node across the methods of a suite ----------------------------
AE = {"hidden_dims": [16, 16, 32, 4], "pretrain_iters_per_layer": 20, "finetune_iters": 30,
      "pretrain_momentum_burnin": 2, "pretrain_lr_step": 1000}


def _family_suite():
    from bench.suite import parse_suite

    return parse_suite({"name": "family", "seeds": [0, 1], "datasets": ["digits"], "methods": [
        {"name": "ae_kmeans", "config": {**AE, "n_init": 2}, "seed_batch": 2},
        {"name": "dec", "config": {**AE, "max_iters": 40, "update_interval": 20, "n_init": 2}, "seed_batch": 2},
        {"name": "idec", "config": {**AE, "max_iters": 40, "update_interval": 20, "n_init": 2}}]})


def test_suite_builds_the_shared_autoencoder_once_per_seed_and_a_new_commit_reuses_it(tmp_path, capsys):
    from bench.cli import main
    from bench.plan import plan_suite
    from bench.runner import run_suite
    from bench.store import ResultStore

    store = ResultStore(tmp_path / "store")
    data_root = Path(__file__).resolve().parent.parent / "data"
    suite = _family_suite()
    plan = plan_suite(suite, store, data_root, code={"code_version": "c1"})
    # 6 trials (3 methods x 2 seeds) need one sdae node per seed: one unit builds both seeds together
    assert [(u.name, u.seeds) for u in plan.stage_units] == [("sdae", [0, 1])]
    man = run_suite(suite, store=store, data_root=data_root, inline=True, code={"code_version": "c1"})
    recs = store.run_records(man)
    assert len(recs) == 6 and all(r.ok for r in recs)
    by_seed: dict[int, list] = {}
    for r in recs:
        assert len(r.stages) == 1 and r.stages[0]["name"] == "sdae"
        by_seed.setdefault(r.seed, []).append(r)
    for rs in by_seed.values():
        assert len({r.stages[0]["key"] for r in rs}) == 1  # AE + k-means, DEC and IDEC read the same weights
        assert sorted(r.stages[0]["reused"] for r in rs) == [False, True, True]  # built for one, reused by two
        # each reader notes the one build's time, so a report shows what the row cost beyond its own trial
        assert len({r.stages[0]["build_s"] for r in rs}) == 1 and rs[0].stages[0]["build_s"] > 0
    from bench.report import write_report

    md = write_report(recs, tmp_path / "rep", title="family")["markdown"].read_text()
    assert md.count("s building the stages it read") == 3  # one note line per row: AE + k-means, DEC, IDEC
    assert [s["status"] for s in man["stages"]] == ["built", "built"]
    assert len(StageStore(store.stage_dir).entries()) == 2
    # a new code version re-runs every trial but reads the same stages (their version did not change)
    man2 = run_suite(suite, store=store, data_root=data_root, inline=True, code={"code_version": "c2"})
    recs2 = store.run_records(man2)
    assert all(r.ok and r.env["code_version"] == "c2" for r in recs2) and len(recs2) == 6
    assert all(r.stages[0]["reused"] for r in recs2) and man2["stages"] == []
    assert len(StageStore(store.stage_dir).entries()) == 2
    # `bench stages` lists them with their users; --prune keeps what records use
    capsys.readouterr()
    assert main(["stages", "--store", str(store.root)]) == 0
    out = capsys.readouterr().out
    assert out.count("| sdae |") == 2 and "dec/digits/s0" in out and "prunable" not in out
    assert main(["stages", "--store", str(store.root), "--prune"]) == 0
    assert "pruned 0 unused stage(s)" in capsys.readouterr().out
    for p in store.records_dir.glob("*.json"):
        p.unlink()
    assert main(["stages", "--store", str(store.root), "--prune"]) == 0
    assert "pruned 2 unused stage(s)" in capsys.readouterr().out and StageStore(store.stage_dir).entries() == []


# -- named random streams --------------------------------------------------------------------------
def test_named_streams_are_reproducible_independent_and_leave_the_global_generator_alone(tmp_path):
    a, b = _ctx(tmp_path, seed=3), _ctx(tmp_path, seed=3)
    assert torch.equal(torch.rand(5, generator=a.rng("augment")), torch.rand(5, generator=b.rng("augment")))
    assert not torch.equal(torch.rand(5, generator=a.rng("augment")), torch.rand(5, generator=a.rng("data_order")))
    assert not torch.equal(torch.rand(5, generator=a.rng("augment")),
                           torch.rand(5, generator=_ctx(tmp_path, seed=4).rng("augment")))
    torch.manual_seed(123)
    before = torch.get_rng_state()
    with a.init_rng("init"):
        w1 = torch.nn.Linear(4, 3).weight.detach().clone()
    assert torch.equal(torch.get_rng_state(), before)  # the block's reseeding does not leak
    with b.init_rng("init"):
        assert torch.equal(torch.nn.Linear(4, 3).weight, w1)


def test_same_seed_same_result_on_cpu_in_deterministic_mode(tmp_path):
    """A suite run twice from scratch (fresh stores: the stage is rebuilt too) gives identical records."""
    from bench.runner import run_suite
    from bench.store import ResultStore
    from bench.suite import parse_suite

    spec = {"name": "det", "seeds": [5], "datasets": ["digits"], "device": "cpu", "deterministic": True,
            "protocol": {"max_images": 300},
            "methods": [{"name": "dec", "config": {**AE, "max_iters": 40, "update_interval": 20, "n_init": 2}}]}
    data_root = Path(__file__).resolve().parent.parent / "data"
    recs = []
    for run in ("a", "b"):
        store = ResultStore(tmp_path / run)
        man = run_suite(parse_suite(spec), store=store, data_root=data_root, inline=True, code={"code_version": "x"})
        (rec,) = store.run_records(man)
        assert rec.ok
        recs.append((rec, store))
    (ra, sa), (rb, sb) = recs
    assert ra.metrics == rb.metrics and ra.info == rb.info
    assert [r.get("loss") for r in ra.curve] == [r.get("loss") for r in rb.curve]
    import numpy as np

    assert (np.load(sa.artifact_dir(ra.key) / "pred.npy") == np.load(sb.artifact_dir(rb.key) / "pred.npy")).all()
    assert ra.stages[0]["key"] == rb.stages[0]["key"]


# -- hostile edits of the stage store (issue 14 review) ---------------------------------------------
def _stored_probe(tmp_path: Path) -> tuple[StageRequest, Path, Path]:
    log = tmp_path / "log"
    req = StageRequest("test_probe", ProbeStage.Config(log=str(log)))
    _ctx(tmp_path, requests={"p": req}).stage("p")
    return req, tmp_path / "stages" / "test_probe" / req.key("md5-a", "all", 0), log


@pytest.mark.parametrize("edit", ["json-list", "json-string", "curve", "owner", "no-meta-hash"])
def test_a_stage_json_that_is_not_an_object_or_was_edited_is_rebuilt_never_read(tmp_path, capsys, edit):
    """stage.json's curve and owner reach every record that reuses the stage: its bytes are checked like the
    artifact's, and one that is valid JSON but no object is no stage (not an AttributeError in the trial)."""
    import json

    from bench.cli import main

    req, folder, log = _stored_probe(tmp_path)
    meta = json.loads((folder / "stage.json").read_text())
    new = {"json-list": "[]", "json-string": '"x"', "curve": json.dumps({**meta, "curve": [{"loss": 1e9}]}),
           "owner": json.dumps({**meta, "owner": "someone-else"}),
           "no-meta-hash": json.dumps({k: v for k, v in meta.items() if k != "meta_sha256"})}[edit]
    (folder / "stage.json").write_text(new)
    capsys.readouterr()
    assert main(["stages", "--store", str(tmp_path)]) == 0  # lists, does not crash on the odd stage.json
    ctx = _ctx(tmp_path, requests={"p": req})
    ctx.stage("p")
    assert len(_builds(log)) == 2 and ctx.stages_used[0]["reused"] is False
    assert all(r.get("loss") != 1e9 for r in ctx.curve)
    assert json.loads((folder / "stage.json").read_text())["curve"] == meta["curve"]


@pytest.mark.parametrize("kind", ["file", "symlink-loop"])
def test_a_stage_path_that_is_not_a_folder_is_moved_aside_and_rebuilt(tmp_path, kind):
    req, folder, log = _stored_probe(tmp_path)
    import shutil

    shutil.rmtree(folder)
    if kind == "file":
        folder.write_text("not a stage")
    else:
        folder.symlink_to(folder.name)
    ctx = _ctx(tmp_path, requests={"p": req})
    assert ctx.stage("p")["w"].shape == (3,) and len(_builds(log)) == 2  # rebuilt, not a NotADirectoryError
    assert folder.is_dir() and not folder.is_symlink()
    assert [p.name.split("-")[1] for p in StageStore(tmp_path / "stages").leftovers()] == [folder.name]


def test_bench_stages_on_a_missing_store_or_a_file_is_one_error_line(tmp_path, capsys):
    from bench.cli import main

    (tmp_path / "f").write_text("x")
    for store in (tmp_path / "missing", tmp_path / "f"):
        for extra in ([], ["--prune"]):
            capsys.readouterr()
            assert main(["stages", "--store", str(store), *extra]) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and err[0].startswith("error: ") and str(store) in err[0]
    assert not (tmp_path / "missing").exists()


@pytest.mark.parametrize("status", ["running", "interrupted"])
def test_prune_keeps_what_an_unfinished_run_will_read_and_its_partial_builds(tmp_path, capsys, status):
    """A run lists in its manifest only the stages it must build; one it found stored, and the partial build
    `bench run --resume` continues from, are as wanted as those: prune must not take them from under it."""
    import json

    from bench.cli import main
    from bench.registry import get_method
    from bench.stages import walk
    from bench.store import ResultStore

    store = ResultStore(tmp_path / "store")
    cls = get_method("ae_kmeans")
    cfg = cls.Config(hidden_dims=[8, 4], pretrain_iters_per_layer=1, finetune_iters=1)
    protocol = {"train_split": "all", "eval_split": "all", "n_clusters": 2, "max_images": 7}
    (req,) = walk(cls.stages(cfg))
    key = req.key("md5-a", "all[:7]", 0)
    stages = StageStore(store.stage_dir)
    stages.save(req.stage, key, {"state": {}}, {"seed": 0})
    other = req.key("md5-a", "all[:7]", 1)  # a partial build of a stage no run wants any more: leftover
    for k in (key, other):
        stages.partial_dir(req.stage, k).mkdir(parents=True)
        (stages.partial_dir(req.stage, k) / "sdae.ckpt.pt").write_bytes(b"progress")
    import socket
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    man = {"run_id": "r1", "suite": "s", "started_at": "2026-01-01T00:00:00+00:00", "status": status,
           "driver": {"host": socket.gethostname(), "pid": os.getpid()}, "stages": [],
           "trials": [{"key": "0123456789abcdef0123", "method": "ae_kmeans", "variant": "default", "dataset": "d",
                       "seed": 0, "config": cfg.model_dump(mode="json"), "protocol": protocol,
                       "data_md5": "md5-a", "status": "planned"}]}
    store.runs_dir.mkdir(parents=True, exist_ok=True)
    (store.runs_dir / "r1.json").write_text(json.dumps(man))
    capsys.readouterr()
    assert main(["stages", "--store", str(store.root), "--prune"]) == 0
    assert stages.exists(req.stage, key) and stages.partial_dir(req.stage, key).is_dir()
    assert not stages.partial_dir(req.stage, other).exists()
    # its driver is gone and a later finished run of the suite supersedes it (`bench run --resume` no longer
    # continues it): what it wanted is prunable
    man["driver"]["pid"] = int(dead.stdout)
    (store.runs_dir / "r1.json").write_text(json.dumps(man))
    (store.runs_dir / "r2.json").write_text(json.dumps({**man, "run_id": "r2", "status": "finished",
                                                         "started_at": "2026-01-02T00:00:00+00:00"}))
    assert main(["stages", "--store", str(store.root), "--prune"]) == 0
    assert not stages.exists(req.stage, key) and not stages.partial_dir(req.stage, key).exists()


def test_a_stored_stage_is_read_without_its_upstream(tmp_path):
    log = tmp_path / "log.txt"
    probe = StageRequest("test_probe", ProbeStage.Config(log=str(log)))
    child = StageRequest("test_probe_child", ProbeChild.Config(log=str(log)), {"probe": probe})
    first = _ctx(tmp_path, requests={"child": child}).stage("child")
    import shutil

    for folder in (tmp_path / "stages" / "test_probe").iterdir():
        shutil.rmtree(folder)  # the upstream is gone (pruned, say); the child is still stored
    again = _ctx(tmp_path, requests={"child": child}).stage("child")
    assert torch.equal(first["w2"], again["w2"]) and len(_builds(log)) == 2  # nothing rebuilt


def test_a_stage_that_failed_in_a_run_is_not_built_again_by_its_other_readers(tmp_path):
    log = tmp_path / "log.txt"
    req = {"p": StageRequest("test_probe", ProbeStage.Config(log=str(log), fail_seed=0))}
    a = _ctx(tmp_path, key="trial-a", run_id="r1", requests=req)
    with pytest.raises(ValueError):
        a.stage("p")
    assert a.stages_used[0]["status"] == "failed" and a.stages_used[0]["name"] == "test_probe"
    b = _ctx(tmp_path, key="trial-b", run_id="r1", requests=req)  # another method of the same run
    with pytest.raises(Exception, match="failed earlier in this run: ValueError: probe refuses seed 0"):
        b.stage("p")
    assert len(_builds(log)) == 1 and b.failure is not None and b.stages_used[0]["status"] == "failed"
    c = _ctx(tmp_path, key="trial-c", run_id="r2", requests=req)  # a later run tries again
    with pytest.raises(ValueError):
        c.stage("p")
    assert len(_builds(log)) == 2


def test_foreign_run_manifests_are_ignored(tmp_path):
    from bench.store import ResultStore

    store = ResultStore(tmp_path / "s")
    store.runs_dir.mkdir(parents=True)
    (store.runs_dir / "a.json").write_text("[]")
    (store.runs_dir / "b.json").write_text('{"suite": "x"}')
    store.write_run({"run_id": "ok-1", "suite": "x", "started_at": "2026"})
    assert [m["run_id"] for m in store.runs()] == ["ok-1"]


def test_a_run_cut_during_its_stage_builds_says_which_stages_were_never_built(tmp_path, monkeypatch):
    import bench.runner as runner
    from bench.runner import run_suite
    from bench.store import ResultStore

    def interrupted(unit):  # what the SIGINT trap delivers while a stage builds
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "execute_stage_unit", interrupted)
    store = ResultStore(tmp_path / "store")
    data_root = Path(__file__).resolve().parent.parent / "data"
    man = run_suite(_family_suite(), store=store, data_root=data_root, inline=True, code={"code_version": "c1"})
    assert man["status"] == "interrupted" and len(man["stages"]) == 2
    assert {s["status"] for s in man["stages"]} == {"interrupted"}  # never left 'planned' as if still to come
    assert {t["status"] for t in man["trials"]} == {"interrupted"} and StageStore(store.stage_dir).entries() == []
