"""Incremental updates (moves, deletions, explicit removal) and the integrity check."""

import json
import os
import shutil
import sqlite3

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import CountingEncoder, make_images
from vtsearch import Index, IngestOptions
from vtsearch.cli import main
from vtsearch.store.ann import AnnIndex

OPTIONS = IngestOptions(batch_size=4, workers=0)


def stored_state(index):
    """(path → (id, region row)) for every indexed row, and the FAISS ids."""
    with sqlite3.connect(index.path / "catalog.sqlite") as db:
        rows = db.execute("SELECT path, id, region_row FROM images WHERE status = 'indexed'").fetchall()
    return {path: (row_id, region_row) for path, row_id, region_row in rows}, sorted(index.ann.ids().tolist())


def test_moves_keep_vectors_deletions_leave_every_part(tmp_path, tiny_encoder):
    photos = tmp_path / "photos"
    paths = make_images(photos, 10)
    counting = CountingEncoder(tiny_encoder)
    index = Index.create(tmp_path / "index", encoder=counting)
    index.add([photos], OPTIONS)
    before, _ = stored_state(index)

    renamed = photos / "renamed — ü.png"
    os.rename(paths[1], renamed)
    (photos / "sub folder").mkdir()
    moved = photos / "sub folder" / paths[2].name
    os.rename(paths[2], moved)
    paths[3].unlink()
    make_images(tmp_path / "new", 1, seed=9)
    added = photos / "added.jpg"
    shutil.move(tmp_path / "new" / "image_0000.jpg", added)

    summary = index.add([photos], OPTIONS)
    assert (summary.indexed, summary.moved, summary.removed, summary.unchanged) == (1, 2, 1, 7)
    assert counting.images_encoded == 11  # only the added file was encoded
    after, faiss_ids = stored_state(index)
    assert after[str(renamed)] == before[str(paths[1])]  # same id, same region row
    assert after[str(moved)] == before[str(paths[2])]
    assert str(paths[3]) not in after and str(paths[1]) not in after
    assert faiss_ids == sorted(row_id for row_id, _ in after.values())
    hit = index.search_image(moved, k=1)[0]
    assert (hit.id, hit.path) == (before[str(paths[2])][0], str(moved))
    assert index.check().ok
    index.close()


def test_keep_missing_and_only_scanned_roots_are_pruned(tmp_path, tiny_encoder):
    make_images(tmp_path / "a", 3)
    make_images(tmp_path / "b", 3, seed=1)
    with Index.create(tmp_path / "index", encoder=tiny_encoder) as index:
        index.add([tmp_path / "a", tmp_path / "b"], OPTIONS)
        (tmp_path / "a" / "image_0000.jpg").unlink()
        summary = index.add([tmp_path / "b"], OPTIONS)  # a/ is not looked at: nothing removed
        assert (summary.removed, summary.unchanged) == (0, 3)
        summary = index.add([tmp_path / "a"], IngestOptions(workers=0, keep_missing=True))
        assert (summary.removed, summary.kept_missing) == (0, 1)
        assert index.info().images == 6
        summary = index.add([tmp_path / "a"], OPTIONS)
        assert summary.removed == 1 and index.info().images == 5 and len(index.ann) == 5


def test_a_folder_that_cannot_be_listed_is_not_taken_as_deleted(tmp_path, tiny_encoder, monkeypatch):
    make_images(tmp_path / "photos" / "locked", 3)
    make_images(tmp_path / "photos", 2, seed=1)
    with Index.create(tmp_path / "index", encoder=tiny_encoder) as index:
        index.add([tmp_path / "photos"], OPTIONS)
        real_scandir = os.scandir

        def scandir(path):
            if os.fspath(path).endswith("locked"):
                raise PermissionError(13, "Permission denied")
            return real_scandir(path)

        monkeypatch.setattr(os, "scandir", scandir)
        summary = index.add([tmp_path / "photos"], OPTIONS)
        assert (summary.removed, summary.unchanged) == (0, 2)
        assert [e.reason for e in summary.skipped] == ["unreadable: Permission denied"]
        assert index.info().images == 5


def test_remove_by_file_and_folder_whether_or_not_they_exist(tmp_path, tiny_encoder):
    paths = make_images(tmp_path / "photos", 4)
    make_images(tmp_path / "photos" / "old", 3, seed=1)
    with Index.create(tmp_path / "index", encoder=tiny_encoder) as index:
        index.add([tmp_path / "photos"], OPTIONS)
        paths[0].unlink()
        summary = index.remove([paths[0], tmp_path / "photos" / "old", tmp_path / "never"])
        assert len(summary.removed) == 4 and summary.not_indexed == [str(tmp_path / "never")]
        assert index.info().images == 3 and len(index.ann) == 3
        assert all("/old/" not in r.path for r in index.search_text("x", k=10))
        assert index.check().ok
    # a folder whose name is a prefix of another's is not touched
    make_images(tmp_path / "photos2", 2)
    with Index.open(tmp_path / "index", encoder=tiny_encoder) as index:
        index.add([tmp_path / "photos2"], OPTIONS)
        assert len(index.remove([tmp_path / "photos"]).removed) == 3
        assert index.info().images == 2


def damage(index_dir, tiny_encoder):
    """Three kinds of drift: FAISS behind the catalog, a torn region row, a lost embedding."""
    with Index.open(index_dir, encoder=tiny_encoder) as index:
        manifest = index.manifest
    ann = AnnIndex.load(index_dir / "ann.faiss", manifest.ann)
    ann.remove([2])
    ann.save(index_dir / "ann.faiss")
    regions = index_dir / "regions.f16"
    with open(regions, "r+b") as handle:
        handle.truncate(regions.stat().st_size - 10)  # the last row is torn
    with sqlite3.connect(index_dir / "catalog.sqlite") as db:
        db.execute("UPDATE images SET embedding = x'00' WHERE id = 5")


def test_check_finds_drift_and_repair_restores_agreement(tmp_path, tiny_encoder):
    make_images(tmp_path / "photos", 8)
    with Index.create(tmp_path / "index", encoder=tiny_encoder) as index:
        index.add([tmp_path / "photos"], OPTIONS)
        assert index.check().ok
    damage(tmp_path / "index", tiny_encoder)

    with Index.open(tmp_path / "index", encoder=tiny_encoder, rebuild_stale=False) as index:
        report = index.check()
        parts = sorted({problem.part for problem in report.problems})
        assert parts == ["ann", "catalog", "regions"], report.problems
        messages = " ".join(problem.message for problem in report.problems)
        assert "no region row" in messages and "missing from ann.faiss" in messages
        assert report.torn_region_bytes > 0
        repaired = index.check(repair=True)
        assert repaired.repaired and index.check().ok
        lost = {os.path.basename(e.path) for e in index.errors()}
        assert len(lost) == 2  # the last image (torn regions) and id 5 (bad embedding)
        assert all(e.reason.startswith("lost:") for e in index.errors())
        summary = index.add([tmp_path / "photos"], OPTIONS)  # re-encodes exactly those
        assert summary.indexed == 2 and summary.unchanged == 6
        assert index.check().ok and index.info().images == 8
        state, faiss_ids = stored_state(index)
        assert sorted(row_id for row_id, _ in state.values()) == faiss_ids == list(range(1, 9))


def test_check_and_remove_commands(tmp_path, tiny_model_dir):
    make_images(tmp_path / "photos", 5)
    runner = CliRunner()
    index_dir = str(tmp_path / "index")
    model = f"local-dir:{tiny_model_dir}"
    assert runner.invoke(main, ["index", str(tmp_path / "photos"), "--index", index_dir,
                                "--model", model, "--workers", "0"]).exit_code == 0
    result = runner.invoke(main, ["check", "--index", index_dir, "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["ok"] is True

    (tmp_path / "index" / "ann.faiss").unlink()
    result = runner.invoke(main, ["check", "--index", index_dir])
    assert result.exit_code == 1 and "ann.faiss is missing" in result.stdout
    result = runner.invoke(main, ["check", "--index", index_dir, "--repair", "--json"])
    report = json.loads(result.stdout)
    assert result.exit_code == 0 and report["ok_after_repair"] and report["repaired"]

    result = runner.invoke(main, ["remove", str(tmp_path / "photos" / "image_0001.png"),
                                  "--index", index_dir, "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["removed"] == 1
    result = runner.invoke(main, ["info", "--index", index_dir, "--json"])
    assert json.loads(result.stdout)["images"] == 4


def test_region_rows_are_never_shared(tmp_path, tiny_encoder):
    """A changed file gets a new region row; the old one is counted as unused space."""
    paths = make_images(tmp_path / "photos", 3)
    with Index.create(tmp_path / "index", encoder=tiny_encoder) as index:
        index.add([tmp_path / "photos"], OPTIONS)
        pixels = np.full((40, 40, 3), 200, dtype=np.uint8)
        from PIL import Image

        Image.fromarray(pixels).save(paths[0])
        index.add([tmp_path / "photos"], OPTIONS)
        report = index.check()
        assert report.ok and (report.region_rows, report.dead_region_rows) == (4, 1)


@pytest.mark.parametrize("bad", ["manifest", "catalog"])
def test_damaged_manifest_or_catalog_is_a_clear_error(tmp_path, tiny_encoder, bad):
    Index.create(tmp_path / "index", encoder=tiny_encoder).close()
    target = tmp_path / "index" / ("manifest.json" if bad == "manifest" else "catalog.sqlite")
    target.write_bytes(b"\x00garbage" * 100)
    result = CliRunner().invoke(main, ["search", "x", "--index", str(tmp_path / "index")])
    assert result.exit_code == 1
    assert str(target) in result.stderr and "damaged" in result.stderr


def test_removals_compact_the_region_store_under_a_reader(tmp_path, tiny_encoder):
    paths = make_images(tmp_path / "photos", 12)
    with Index.create(tmp_path / "index", encoder=tiny_encoder) as index:
        index.add([tmp_path / "photos"], OPTIONS)
    reader = Index.open(tmp_path / "index", encoder=tiny_encoder)
    source = reader.region_source
    before = source.regions(list(range(1, 13))).numpy()

    with Index.open(tmp_path / "index", encoder=tiny_encoder) as writer:
        writer.remove(paths[:2])  # 2 of 12 unused: under the threshold, left alone
        assert writer.store.regions.store.path.name == "regions.f16"
        for path in paths[:6]:  # (a removed file still on disk would be indexed again)
            path.unlink()
        summary = writer.add([tmp_path / "photos"], OPTIONS)  # 6 of 12 unused: compacted
        assert summary.removed == 4
        report = writer.check()
        assert report.ok and (report.region_rows, report.dead_region_rows) == (6, 0)
    assert [p.name for p in (tmp_path / "index").glob("regions*.f16")] == ["regions.1.f16"]

    kept = list(range(7, 13))
    np.testing.assert_array_equal(source.regions(kept).numpy(), before[6:])  # the old reader follows
    assert [r.path for r in reader.search_text("x", k=20)] != []
    make_images(tmp_path / "photos" / "later", 2, seed=4)
    assert reader.add([tmp_path / "photos"], OPTIONS).indexed == 2  # appends to the new file
    assert reader.check().ok and len(reader.store.regions.store) == 8
    assert [p.name for p in (tmp_path / "index").glob("regions*.f16")] == ["regions.1.f16"]
    reader.close()
    with Index.open(tmp_path / "index", encoder=tiny_encoder) as index:
        np.testing.assert_array_equal(index.region_source.regions(kept).numpy(), before[6:])
        assert index.compact_regions() == 0


def test_a_catalog_damaged_inside_is_a_clear_error_not_an_empty_result(tmp_path, tiny_encoder):
    make_images(tmp_path / "photos", 40)
    with Index.create(tmp_path / "index", encoder=tiny_encoder) as index:
        index.add([tmp_path / "photos"], OPTIONS)
    catalog = tmp_path / "index" / "catalog.sqlite"
    with sqlite3.connect(catalog) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        kept = {1} | {page for (page,) in db.execute(  # the schema and meta pages: the file opens
            "SELECT rootpage FROM sqlite_master WHERE tbl_name = 'meta'")}
    data = bytearray(catalog.read_bytes())
    for page in range(1, len(data) // page_size + 1):  # SQLite numbers pages from 1
        if page not in kept:
            data[(page - 1) * page_size:page * page_size] = b"\xff" * page_size
    catalog.write_bytes(bytes(data))
    runner = CliRunner()
    for args in (["search", "a red square"], ["info"], ["errors"], ["check"]):
        result = runner.invoke(main, [*args, "--index", str(tmp_path / "index")])
        assert result.exit_code == 1, (args, result.output)
        assert f"catalog {catalog} is damaged (database disk image is malformed)" in result.stderr, args


def test_newer_manifest_and_changed_model_weights_are_clear_errors(tmp_path, tiny_encoder):
    import open_clip
    from safetensors.torch import save_file

    from conftest import TINY_MODEL_CFG, write_tiny_model
    from vtsearch import EncoderSpec, ModelMismatchError

    model_dir = write_tiny_model(tmp_path / "model")
    from vtsearch.encoder import Encoder

    encoder = Encoder.load(EncoderSpec.parse(f"local-dir:{model_dir}"), tiny_encoder.device)
    make_images(tmp_path / "photos", 3)
    with Index.create(tmp_path / "index", encoder=encoder) as index:
        index.add([tmp_path / "photos"], OPTIONS)

    write_tiny_model(model_dir, seed=1)  # the same model, other weights: same width
    with Index.open(tmp_path / "index", device="cpu") as index:
        with pytest.raises(ModelMismatchError, match=r"now embeds text differently .*\(cosine -?0\.\d+ on a fixed probe"):
            index.search_text("x")

    wider = {**TINY_MODEL_CFG, "embed_dim": 32}  # the folder's model is replaced by another
    (model_dir / "open_clip_config.json").write_text(json.dumps({"model_cfg": wider, "preprocess_cfg": {}}))
    save_file({k: v.contiguous() for k, v in open_clip.CLIP(**wider).state_dict().items()},
              str(model_dir / "open_clip_model.safetensors"))
    with Index.open(tmp_path / "index", device="cpu") as index:
        with pytest.raises(ModelMismatchError, match="now gives 32-wide vectors.*holds 64-wide"):
            index.search_text("x")

    manifest = tmp_path / "index" / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "schema_version": 99}))
    result = CliRunner().invoke(main, ["info", "--index", str(tmp_path / "index")])
    assert result.exit_code == 1 and "schema version 99, newer than this vtsearch" in result.stderr
