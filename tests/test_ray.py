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
