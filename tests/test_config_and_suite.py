"""Bad input: one clear line, exit code 2, nothing runs, nothing stored is lost."""


import pytest

from bench.cli import main
from bench.errors import BenchError
from bench.registry import get_method, resolve_config
from bench.suite import load_suite, parse_suite


def test_unknown_method_suggests_and_lists():
    with pytest.raises(BenchError, match=r"unknown method 'deck'.*did you mean 'dec'.*kmeans"):
        get_method("deck")


def test_unknown_key_wrong_type_and_variant():
    with pytest.raises(BenchError, match=r"no config key 'lrr'.*did you mean 'lr'"):
        resolve_config("dec", overrides={"lrr": 0.1})
    with pytest.raises(BenchError, match=r"config key 'n_init'.*valid integer.*'many'"):
        resolve_config("kmeans", overrides={"n_init": "many"})
    with pytest.raises(BenchError, match=r"no variant 'fast'"):
        resolve_config("kmeans", variant="fast")


def test_defaults_then_dataset_then_overrides():
    cfg = resolve_config("dec", dataset="stl10")
    assert cfg.update_interval == 40  # official per-dataset value
    assert resolve_config("dec", dataset="mnist").update_interval == 160
    assert resolve_config("dec", dataset="stl10", overrides={"update_interval": 7}).update_interval == 7
    assert resolve_config("dec").lr == 0.01 and resolve_config("dec").hidden_dims == [500, 500, 2000, 10]
    # YAML reads 1e-3 as a string; it must still become a float
    assert resolve_config("dec", overrides={"lr": "1e-3"}).lr == pytest.approx(1e-3)


def test_suite_seed_count_and_plain_method_names():
    s = parse_suite({"name": "x", "seeds": 3, "datasets": ["digits"], "methods": ["kmeans", {"name": "dec"}]})
    assert s.seeds == [0, 1, 2] and [m.name for m in s.methods] == ["kmeans", "dec"]


@pytest.mark.parametrize("data,pattern", [
    ({"name": "x", "seeds": [0], "datasets": ["digits"], "methods": ["kmeans"], "sedes": 1}, "sedes: unknown key"),
    ({"name": "x", "seeds": "0", "datasets": ["digits"], "methods": ["kmeans"]}, "seeds"),
    ({"name": "x", "seeds": [0], "datasets": [], "methods": ["kmeans"]}, "grid is empty"),
    ({"name": "x", "seeds": [0, 0], "datasets": ["digits"], "methods": ["kmeans"]}, "seeds repeat"),
    ({"name": "a b", "seeds": [0], "datasets": ["digits"], "methods": ["kmeans"]}, "name"),
    ([1, 2], "YAML mapping"),
])
def test_bad_suites(data, pattern):
    with pytest.raises(BenchError, match=pattern):
        parse_suite(data)


def _run_cli(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


@pytest.mark.parametrize("body,pattern", [
    ("name: t\nseeds: [0]\ndatasets: [digits]\nmethods: [kmeanz]\n", "unknown method 'kmeanz'"),
    ("name: t\nseeds: [0]\ndatasets: [digitz]\nmethods: [kmeans]\n", "unknown dataset 'digitz'"),
    ("name: t\nseeds: [0]\ndatasets: [digits]\nmethods: [{name: kmeans, config: {n_inti: 3}}]\n", "n_inti"),
    ("name: t\nseeds: [0]\ndatasets: [digits]\nmethods: [{name: kmeans, config: {n_init: x}}]\n", "n_init"),
    ("name: t\nseeds: [0\n", "not valid YAML"),
    ("name: t\nseeds: [0]\ndatasets: [mnist]\nmethods: [kmeans]\n", "missing file"),
])
def test_cli_bad_input_exit_2_one_line_and_store_untouched(tmp_path, capsys, body, pattern):
    store = tmp_path / "store"
    (store / "records").mkdir(parents=True)
    keep = store / "records" / "earlier.json"
    keep.write_text("{}")
    suite = tmp_path / "s.yaml"
    suite.write_text(body)
    code, err = _run_cli(capsys, "run", str(suite), "--inline", "--store", str(store), "--data",
                         str(tmp_path / "nodata"), "--out", str(tmp_path / "rep"))
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and pattern in err[0]
    assert keep.read_text() == "{}" and sorted(p.name for p in (store / "records").iterdir()) == ["earlier.json"]
    assert not (store / "runs").exists()


def test_unreadable_suite_file(tmp_path, capsys):
    code, err = _run_cli(capsys, "run", str(tmp_path / "missing.yaml"), "--store", str(tmp_path / "s"))
    assert code == 2 and "cannot read suite file" in err[0]


def test_repo_suites_parse():
    from tests.conftest import ROOT

    for path in sorted((ROOT / "suites").glob("*.yaml")):
        spec = load_suite(path)
        assert spec.seeds and spec.methods, path




def test_every_registered_method_describes_itself_and_resolves_its_defaults():
    from bench.registry import describe_method, method_names

    names = method_names()
    assert {"kmeans", "dec", "idec", "ae_kmeans", "depict", "simclr_kmeans", "cc", "pica", "idfd"} <= set(names)
    for name in names:
        cls = get_method(name)
        assert name in describe_method(name) and cls.selection_rule
        for variant in cls.variants:
            resolve_config(name, variant)  # every variant's preset is a valid config
