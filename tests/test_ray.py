"""The Ray Tune path: a real local Ray instance, a killed worker, fractional resources."""

import pytest

ray = pytest.importorskip("ray")

from bench.runner import run_suite  # noqa: E402
from bench.suite import parse_suite  # noqa: E402

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def local_ray():
    from bench.runner import _ray_init

    _ray_init(None)
    yield
    ray.shutdown()


def test_ray_grid_with_a_killed_worker(local_ray, store):
    s = parse_suite({"name": "ray", "seeds": [0, 1, 2], "datasets": ["digits"],
                     "methods": ["test_first_pixel", "test_killer"], "resources": {"cpus_per_trial": 0.5}})
    man = run_suite(s, store=store, data_root=store.root)
    by = {(t["method"], t["seed"]): t["status"] for t in man["trials"]}
    assert [by[("test_first_pixel", i)] for i in range(3)] == ["ok"] * 3
    assert by[("test_killer", 0)] == "ok" and by[("test_killer", 2)] == "ok"
    assert by[("test_killer", 1)] == "interrupted"  # the dead worker's seed is reported, not dropped
    lost = next(r for r in store.run_records(man) if r.method == "test_killer" and r.seed == 1)
    assert lost.status == "interrupted" and "worker lost" in lost.error
    assert man["mode"] == "ray" and man["status"] == "finished"
    logs = store.log_dir(man["run_id"])  # Ray's driver logs and each trial's output, not the terminal
    assert (logs / "driver.log").stat().st_size > 0 and (logs / "test_first_pixel-default-digits-s0.log").exists()


def test_ray_builds_a_shared_stage_once_before_its_trials(local_ray, store):
    """AE + k-means and DEC on two seeds through Ray: the planner's stage task trains both seeds' autoencoders
    (one batched model) before the four trials, which all read them."""
    ae = {"hidden_dims": [16, 16, 32, 4], "pretrain_iters_per_layer": 10, "finetune_iters": 10,
          "pretrain_momentum_burnin": 2, "n_init": 2}
    s = parse_suite({"name": "ray_stages", "seeds": [0, 1], "datasets": ["digits"], "resources": {"cpus_per_trial": 1},
                     "methods": [{"name": "ae_kmeans", "config": ae},
                                 {"name": "dec", "config": {**ae, "max_iters": 20, "update_interval": 10}}]})
    man = run_suite(s, store=store, data_root=store.root)
    recs = store.run_records(man)
    assert [r.status for r in recs] == ["ok"] * 4
    assert [st["status"] for st in man["stages"]] == ["built", "built"]
    assert (store.log_dir(man["run_id"]) / "stage-sdae-digits-s0_1.log").exists()
    for seed in (0, 1):
        used = [r.stages[0] for r in recs if r.seed == seed]
        assert used[0]["key"] == used[1]["key"] and sorted(u["reused"] for u in used) == [False, True]
