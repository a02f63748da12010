"""The split kept on disk (fedbuff.partition_cache): the same rows as computing them, never stale."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from fedbuff import partition_cache, run_data
from fedbuff.builtin_tasks import BundledOptions

PARTITIONERS = ["iid", "dirichlet", "pathological", "tier-correlated"]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv(partition_cache.CACHE_DIR_ENV, str(folder))
    return folder


@pytest.fixture(scope="module")
def data():
    return run_data.load(BundledOptions())


def computed(settings: BundledOptions, data, num_partitions: int) -> list[np.ndarray]:
    params = {"alpha": settings.dirichlet_alpha, "classes_per_partition": settings.classes_per_partition}
    from fedbuff import partitioners

    return partitioners.all_partitions(settings.partitioner, data.train.labels, num_partitions, settings.seed, **params)


@pytest.mark.parametrize("partitioner", PARTITIONERS)
def test_kept_rows_are_the_computed_rows_for_every_client(cache, data, partitioner):
    settings = BundledOptions(partitioner=partitioner, seed=7)
    reference = computed(settings, data, 5)
    first = run_data.all_client_rows(settings, data, 5)
    assert len(list(cache.glob("*.npz"))) == 1
    again = [run_data.client_rows(settings, data, p, 5) for p in range(5)]  # read from the file
    for want, a, b in zip(reference, first, again, strict=True):
        assert np.array_equal(want, a) and np.array_equal(want, b)


def test_anything_that_decides_the_rows_is_another_entry(cache, data):
    base = BundledOptions(partitioner="dirichlet")
    rows = {}
    for variant in (base, BundledOptions(partitioner="dirichlet", seed=1), BundledOptions(dirichlet_alpha=0.3)):
        rows[variant] = run_data.all_client_rows(variant, data, 4)
    run_data.all_client_rows(base, data, 3)
    assert len(list(cache.glob("*.npz"))) == 4
    assert not all(np.array_equal(a, b) for a, b in zip(rows[base], rows[BundledOptions(seed=1)], strict=True))


@pytest.mark.parametrize("damage", [b"", b"not a zip file", "foreign"])
def test_a_damaged_or_foreign_entry_is_computed_again_and_replaced(cache, data, damage, caplog):
    settings = BundledOptions()
    want = run_data.all_client_rows(settings, data, 4)
    (entry,) = cache.glob("*.npz")
    if damage == "foreign":  # rows that cannot belong to this data
        np.savez(entry, *[np.array([10**6 + i]) for i in range(4)])
    else:
        entry.write_bytes(damage)
    got = run_data.all_client_rows(settings, data, 4)
    assert all(np.array_equal(a, b) for a, b in zip(want, got, strict=True))
    assert "computing the split again" in caplog.text
    assert all(np.array_equal(a, b) for a, b in zip(want, run_data.all_client_rows(settings, data, 4), strict=True))


def test_an_unwritable_or_switched_off_cache_only_costs_the_saving(tmp_path, monkeypatch, data):
    blocked = tmp_path / "file"
    blocked.write_text("")
    monkeypatch.setenv(partition_cache.CACHE_DIR_ENV, str(blocked / "cache"))  # under a file: not creatable
    want = run_data.all_client_rows(BundledOptions(), data, 4)
    monkeypatch.setenv(partition_cache.CACHE_DIR_ENV, "")
    assert partition_cache.cache_dir() is None
    got = run_data.all_client_rows(BundledOptions(), data, 4)
    assert all(np.array_equal(a, b) for a, b in zip(want, got, strict=True))


def test_a_kept_split_spares_a_trainer_the_datasets_import(cache, data):
    run_data.all_client_rows(BundledOptions(), data, 4)
    script = (
        "import sys; from fedbuff import run_data; from fedbuff.builtin_tasks import BundledOptions; "
        "s = BundledOptions(); run_data.client_rows(s, run_data.load(s), 2, 4); print('datasets' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
