"""Mining on Ray (a local cluster of 2 one-CPU workers) equals mining in this process, also after
a worker is killed mid-run (Ray restarts it and retries) and after the driver is killed (a new
driver resumes from the stored shards and mines none of them again)."""

import functools
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import scope
from scope.mining.distributed import ShardStore, shard_of
from tests.sae_util import random_params, write_params

ROOT = Path(__file__).resolve().parent.parent
WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "Paris",
    "is",
    "capital",
    "of",
    "France",
    "def",
    "add",
    "return",
    "a",
    "b",
    "Rome",
    "river",
]
# No two windows alike: shards batch windows differently from one process, which moves activations
# by float rounding (~1e-7), so only examples that tie to the last bit could swap ranks.
TEXTS = [" ".join(random.Random(i).choices(WORDS, k=4 + i % 9)) for i in range(30)]
KWARGS = dict(k=3, window=8, batch_size=4, progress=False)
HOOKS = {"early": "blocks.0.hook_resid_post", "late": "blocks.2.hook_resid_post"}

pytestmark = pytest.mark.slow  # each starts Ray workers that import torch and load the model


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    yield ray
    ray.shutdown()


@pytest.fixture
def saes(tmp_path, tiny_model):
    """Two SAEs as workers load them (callables) and as this process has them (loaded)."""
    specs, loaded = {}, {}
    for seed, (name, hook) in enumerate(HOOKS.items()):
        path = write_params(tmp_path / name / "params.npz", random_params(64, 24, seed=seed))
        specs[name] = functools.partial(scope.load_sae, path, hook=hook, device="cpu")
        loaded[name] = specs[name]()
    return specs, loaded


def model_factory(tiny_dir):
    return functools.partial(scope.load_model, "shieldgemma-2b", weights=tiny_dir, device="cpu")


class KillsItsWorker(list):
    """Texts that kill the Ray worker process reading them, the first time only (a marker file
    remembers); the driver, which reads them to hash the corpus, is spared."""

    def __init__(self, texts, marker, driver):
        super().__init__(texts)
        self.marker, self.driver = str(marker), driver

    def __iter__(self):
        if os.getpid() != self.driver and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return super().__iter__()

    def __reduce__(self):
        return KillsItsWorker, (list(self), self.marker, self.driver)


def _assert_equal(got, expected):
    """Equal: tables (activations to pandas' rtol 1e-5), counts and histograms exactly."""
    assert list(got) == list(expected)
    for name in expected:
        pd.testing.assert_frame_equal(got[name].examples, expected[name].examples)
        assert got[name].n_tokens == expected[name].n_tokens
        assert torch.equal(got[name].histogram, expected[name].histogram)
        assert torch.equal(got[name].density, expected[name].density)
        torch.testing.assert_close(got[name].context_acts, expected[name].context_acts)


def test_shards_are_a_stable_split():
    assert [shard_of(t, 5) for t in TEXTS] == [shard_of(t, 5) for t in TEXTS]
    assert len({shard_of(t, 5) for t in TEXTS}) == 5


@pytest.mark.heavy
def test_ray_equals_one_process_even_when_a_worker_dies(ray_cluster, tiny_model, tiny_dir, saes, tmp_path):
    specs, loaded = saes
    expected = scope.mine(tiny_model, loaded, TEXTS, **KWARGS)
    assert all(len(m.examples) > 20 for m in expected.values())
    texts = KillsItsWorker(TEXTS, tmp_path / "killed", os.getpid())
    out = tmp_path / "ray"
    got = scope.mine(model_factory(tiny_dir), specs, texts, out=out, engine="ray", workers=2, shards=5, **KWARGS)
    assert (tmp_path / "killed").exists()  # a worker did die mid-run, and Ray retried its shard
    _assert_equal(got, expected)
    for name in HOOKS:
        pd.testing.assert_frame_equal(pd.read_parquet(out / f"sae={name}" / "part-0.parquet"), expected[name].examples)
    assert not (tmp_path / ".ray.shards").exists()
    # One SAE, handed over loaded: the same single Parquet file a single-process run writes.
    single = scope.mine(
        model_factory(tiny_dir),
        loaded["late"],
        TEXTS,
        out=tmp_path / "one.parquet",
        engine="ray",
        workers=2,
        shards=3,
        **KWARGS,
    )
    pd.testing.assert_frame_equal(single.examples, expected["late"].examples)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "one.parquet"), expected["late"].examples)


DRIVER = """
import functools, os, signal, sys
import ray
import scope
from scope.mining.distributed import ShardStore
from tests.test_distributed import KWARGS, TEXTS, HOOKS

tiny_dir, sae_dir, out = sys.argv[1:4]
saved = []
original = ShardStore.save

def save_then_die(self, shard, result):
    original(self, shard, result)
    saved.append(shard)
    if len(saved) == 2:
        os.kill(os.getpid(), signal.SIGKILL)  # the driver dies; nothing cleans up

ShardStore.save = save_then_die
ray.init(num_cpus=2, include_dashboard=False)
specs = {name: functools.partial(scope.load_sae, f"{sae_dir}/{name}/params.npz", hook=hook, device="cpu")
         for name, hook in HOOKS.items()}
model = functools.partial(scope.load_model, "shieldgemma-2b", weights=tiny_dir, device="cpu")
scope.mine(model, specs, TEXTS, out=out, engine="ray", workers=2, shards=6, **KWARGS)
"""


@pytest.mark.heavy
def test_a_killed_driver_resumes_without_mining_a_stored_shard_again(
    ray_cluster, tiny_model, tiny_dir, saes, tmp_path, monkeypatch
):
    specs, loaded = saes
    out = tmp_path / "ray"
    run = subprocess.run(
        [sys.executable, "-c", DRIVER, str(tiny_dir), str(tmp_path), str(out)], cwd=ROOT, capture_output=True, text=True
    )
    assert run.returncode == -9, run.stderr[-3000:]
    store = tmp_path / ".ray.shards"
    stored = sorted(int(p.stem.split("-")[1]) for p in store.glob("shard-*.pt"))
    assert len(stored) == 2 and not out.exists()
    mined = []
    original = ShardStore.save
    monkeypatch.setattr(
        ShardStore, "save", lambda self, shard, result: (mined.append(shard), original(self, shard, result))
    )
    got = scope.mine(model_factory(tiny_dir), specs, TEXTS, out=out, engine="ray", workers=2, shards=6, **KWARGS)
    assert sorted(mined) == sorted(set(range(6)) - set(stored))  # the stored shards were not mined again
    _assert_equal(got, scope.mine(tiny_model, loaded, TEXTS, **KWARGS))
    assert not store.exists()


def test_a_store_of_another_run_is_refused(tmp_path):
    ShardStore(tmp_path / "s", {"k": 3}, overwrite=False, restart_hint="start again")
    with pytest.raises(ValueError, match=r"different run \(k differ\); start again"):
        ShardStore(tmp_path / "s", {"k": 4}, overwrite=False, restart_hint="start again")
    ShardStore(tmp_path / "s", {"k": 4}, overwrite=True, restart_hint="start again")


def test_without_ray_the_error_names_the_extra(monkeypatch, tiny_model):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(ImportError, match=r'pip install "scope\[ray\]"'):
        scope.mine("shieldgemma-2b", {"a": "demo"}, TEXTS, engine="ray", workers=2, progress=False)
