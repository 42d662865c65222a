"""``--engine ray`` on a local Ray instance that the tests start: the index it builds
equals a local build (same ids, same vectors, same regions within fp16), and a run cut
short by a dead driver or worker resumes to the same result."""

import importlib.util
import os
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import need
from vtsearch import Index, IngestOptions
from vtsearch.build.distributed import SHARDS_DIR, EncodeWorker, RayEngine, RayOptions
from vtsearch.cli import main

WORKER_EXIT_ONCE = "VTSEARCH_TEST_WORKER_EXIT_ONCE"  # a marker path; absent: the next shard kills its worker

OPTIONS = IngestOptions(workers=0, batch_size=4)
RAY = RayOptions(workers=2, shard_batches=2)


@pytest.fixture(scope="module")
def ray_instance(tmp_path_factory):
    need(importlib.util.find_spec("ray") is not None, "Ray (pip install 'vtsearch[ray]')")
    import ray

    # the workers inherit the environment of the instance: a disarmed fault marker that
    # a test can arm by deleting it
    marker = tmp_path_factory.mktemp("ray") / "worker-exited"
    marker.touch()
    os.environ[WORKER_EXIT_ONCE] = str(marker)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers get ExitOnceWorker itself
    yield marker
    ray.shutdown()
    del os.environ[WORKER_EXIT_ONCE]


@pytest.fixture
def photos(image_folder):
    """Good images in nested folders, plus files that fail to decode in between (their
    error rows take ids too, so batch boundaries matter)."""
    return image_folder


def build_local(folder, photos, encoder):
    with Index.create(folder, encoder=encoder) as index:
        index.add([photos], OPTIONS)


def assert_same_index(left, right, encoder, same_ids=True):
    """The same rows, vectors (float32, to rounding) and regions (fp16) per path; with
    ``same_ids`` the same ids too (a resumed run may number its rows in another order)."""
    with Index.open(left, encoder=encoder) as a, Index.open(right, encoder=encoder) as b:
        paths = sorted(a.catalog.under("/"))
        assert paths == sorted(b.catalog.under("/")) and len(paths) > 30
        rows_a, rows_b = a.catalog.entries(paths), b.catalog.entries(paths)
        if same_ids:
            assert rows_a == rows_b
        assert [(e.size, e.mtime_ns, e.content_hash, e.status) for e in rows_a.values()] == [
            (e.size, e.mtime_ns, e.content_hash, e.status) for e in rows_b.values()]
        assert [e.reason for e in a.errors()] == [e.reason for e in b.errors()] and a.errors()
        indexed = [path for path in paths if rows_a[path].status == "indexed"]
        ids_a, ids_b = [rows_a[p].id for p in indexed], [rows_b[p].id for p in indexed]
        dim = a.manifest.embed_dim
        np.testing.assert_allclose(a.catalog.vectors(ids_a, dim), b.catalog.vectors(ids_b, dim), atol=1e-5)
        np.testing.assert_allclose(a.region_source.regions(ids_a).numpy(), b.region_source.regions(ids_b).numpy(),
                                   atol=1e-3)
        assert sorted(b.ann.ids().tolist()) == sorted(ids_b)
        found_a, found_b = a.search_text("a red square", k=5), b.search_text("a red square", k=5)
        assert [r.path for r in found_a] == [r.path for r in found_b]
        assert [r.score for r in found_a] == pytest.approx([r.score for r in found_b], abs=1e-5)
        assert b.check().ok


def test_a_ray_build_equals_a_local_build(tmp_path, photos, tiny_encoder, ray_instance):
    build_local(tmp_path / "local", photos, tiny_encoder)
    with Index.create(tmp_path / "ray", encoder=tiny_encoder) as index:
        summary = index.add([photos], OPTIONS, ray=RAY)
    assert summary.indexed == 30 and len(summary.skipped) == 3
    assert not (tmp_path / "ray" / SHARDS_DIR).exists()  # committed shard files are gone
    assert_same_index(tmp_path / "local", tmp_path / "ray", tiny_encoder)
    # a second run encodes nothing again (only the failures are retried, as locally)
    with Index.open(tmp_path / "ray", encoder=tiny_encoder) as index:
        again = index.add([photos], OPTIONS, ray=RAY)
    assert again.indexed == 0 and again.unchanged == 30 and len(again.skipped) == 3


class DriverDies(Exception):
    pass


class DieAfter:
    """Progress that kills the run (the driver) after ``shards`` shards are committed."""

    def __init__(self, shards):
        self.left = shards

    def start(self, total):
        pass

    def advance(self, count):
        self.left -= 1
        if self.left == 0:
            raise DriverDies()

    def close(self):
        pass


class ExitOnceWorker(EncodeWorker):
    """A worker that dies in the middle of its shard when the fault marker is missing."""

    def encode_shard(self, shard, folder):
        marker = os.environ.get(WORKER_EXIT_ONCE)
        if marker and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)
        return super().encode_shard(shard, folder)


def test_a_run_resumes_after_its_worker_and_its_driver_die(tmp_path, photos, tiny_encoder, ray_instance):
    build_local(tmp_path / "local", photos, tiny_encoder)
    ray_instance.unlink()  # arm: the first shard's worker exits; Ray restarts it and retries
    with Index.create(tmp_path / "ray", encoder=tiny_encoder) as index:
        with pytest.raises(DriverDies):
            engine = RayEngine(index.path, index.manifest.encoder, "auto", RAY, index.manifest.encoder_probe,
                               worker_class=ExitOnceWorker)
            index.add([photos], OPTIONS, progress=DieAfter(2), engine=engine)
        assert ray_instance.exists()  # a worker did die
        committed = index.catalog.count()
        assert 0 < committed < 33
    with Index.open(tmp_path / "ray", encoder=tiny_encoder) as index:
        summary = index.add([photos], OPTIONS, ray=RAY)
    assert summary.indexed + summary.unchanged == 30 and summary.unchanged > 0
    assert_same_index(tmp_path / "local", tmp_path / "ray", tiny_encoder, same_ids=False)


def test_the_cli_runs_on_ray(tmp_path, photos, tiny_spec, ray_instance):
    result = CliRunner().invoke(main, [
        "index", str(photos), "--index", str(tmp_path / "index"), "--model", tiny_spec.model,
        "--engine", "ray", "--ray-workers", "2", "--batch-size", "4", "--workers", "0",
    ])
    assert result.exit_code == 0, result.output
    assert "indexed 30" in result.output
    refused = CliRunner().invoke(main, ["index", str(photos), "--index", str(tmp_path / "index"),
                                        "--ray-workers", "2"])
    assert refused.exit_code != 0 and "go with --engine ray" in refused.output
