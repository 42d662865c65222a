import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from vtsearch.cli import main


@pytest.fixture
def run():
    runner = CliRunner()

    def invoke(*args, env=None):
        return runner.invoke(main, [str(a) for a in args], env=env, catch_exceptions=False)

    return invoke


@pytest.fixture
def built(run, tmp_path, image_folder, tiny_model_dir):
    index = tmp_path / "index"
    result = run("index", image_folder, "--index", index, "--model", f"local-dir:{tiny_model_dir}",
                 "--workers", 0, "--batch-size", 8)
    assert result.exit_code == 0, result.output
    return index


def test_index_summary_then_rerun_is_unchanged(run, built, image_folder):
    result = run("index", image_folder, "--index", built, "--workers", 0, "--json")
    assert result.exit_code == 0
    summary = json.loads(result.stdout)
    assert summary["indexed"] == 0 and summary["unchanged"] == 30
    assert summary["skipped"] == 3 and summary["not_images"] == 1
    assert summary["skipped_reasons"] == {"empty file": 1, "not an image": 1, "truncated": 1}
    table = run("index", image_folder, "--index", built, "--workers", 0)
    assert "indexed 0 (0 updated), unchanged 30, moved 0, removed 0, skipped 3, not images 1" in table.stdout


def test_search_json_and_table(run, built, image_folder):
    result = run("search", "a green field", "--index", built, "-k", 4, "--json")
    assert result.exit_code == 0
    payload = json.loads(result.stdout)
    assert payload["query"] == "a green field"
    assert [r["rank"] for r in payload["results"]] == [1, 2, 3, 4]
    assert set(payload["results"][0]) >= {"rank", "id", "path", "score"}
    assert payload["results"][0]["path"].startswith(str(image_folder))
    table = run("search", "a green field", "--index", built, "-k", 2)
    assert table.stdout.splitlines()[0].split() == ["rank", "score", "stage", "1", "path"]
    assert len(table.stdout.splitlines()) == 3
    by_image = run("search", "--image", image_folder / "image_0003.jpg", "--index", built, "--json")
    assert json.loads(by_image.stdout)["results"][0]["path"] == str(image_folder / "image_0003.jpg")
    every = json.loads(run("search", "a green field", "--index", built, "-k", 30, "--json").stdout)["results"]
    unique = json.loads(run("search", "a green field", "--index", built, "-k", 30, "--deduplicate",
                            "--json").stdout)["results"]
    assert unique[0]["id"] == every[0]["id"] and len(unique) < len(every)  # the tiny random model sees many
    assert [r["rank"] for r in unique] == list(range(1, len(unique) + 1))


def test_index_from_environment_variable(run, built):
    result = run("info", "--json", env={"VTSEARCH_INDEX": str(built)})
    info = json.loads(result.stdout)
    assert info["images"] == 30 and info["errors"] == 3
    assert info["encoder"]["model"].startswith("local-dir:")


def test_errors_lists_skips(run, built):
    records = json.loads(run("errors", "--index", built, "--json").stdout)
    assert {r["path"].rsplit("/", 1)[1]: r["reason"].split(":")[0] for r in records} == {
        "empty.png": "empty file", "fake.jpg": "not an image", "truncated.jpg": "truncated"}
    assert set(records[0]) == {"path", "reason"}
    assert "truncated" in run("errors", "--index", built).stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (("search", "", "--index", "{index}"), "Error: the query text is empty"),
        (("search", "x", "-k", "0", "--index", "{index}"), "Error: k must be at least 1"),
        (("search", "x", "--index", "{missing}"), "Error: no index at"),
        (("index", "{folder}", "--index", "{index}", "--model", "ViT-B-16", "--pretrained", "openai"),
         "Error: index {index} was built with"),
        (("search", "--image", "{folder}/fake.jpg", "--index", "{index}"), "Error: cannot use query image"),
        (("match", "99999999999999999999999", "--index", "{index}", "--label", "a"),
         "Error: no indexed image has id 99999999999999999999999"),
    ],
)
def test_errors_are_one_line_and_exit_non_zero(run, built, image_folder, tmp_path, args, message):
    fill = {"index": built, "missing": tmp_path / "missing", "folder": image_folder}
    result = run(*[a.format(**fill) for a in args])
    assert result.exit_code == 1
    assert result.stderr.strip().startswith(message.format(**fill))
    assert "Traceback" not in result.output and len(result.stderr.strip().splitlines()) == 1


def test_offline_model_error_is_one_line(run, tmp_path, image_folder, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    result = run("index", image_folder, "--index", tmp_path / "new")
    assert result.exit_code == 1
    assert "--model local-dir:" in result.stderr
    assert not (tmp_path / "new" / "manifest.json").exists()


def test_missing_path_is_a_usage_error(run, tmp_path):
    result = run("index", tmp_path / "nope", "--index", tmp_path / "index")
    assert result.exit_code == 2 and "does not exist" in result.stderr


def test_query_needs_text_or_image(run, built):
    assert run("search", "--index", built).exit_code == 2


HELP_IMPORTS = """
import json
import sys

import click

from vtsearch.cli import main


def command_paths(group, prefix):
    yield prefix
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from command_paths(command, [*prefix, name])
        else:
            yield [*prefix, name]


for path in command_paths(main, []):
    assert main([*path, "--help"], standalone_mode=False) == 0, path
print(json.dumps([name for name in ("torch", "open_clip", "faiss") if name in sys.modules]))
"""


def test_help_imports_no_torch_open_clip_or_faiss():
    """``vtsearch --help`` and every ``vtsearch <command> --help`` stay light: the heavy
    libraries are imported inside command bodies, when a command runs."""
    result = subprocess.run([sys.executable, "-c", HELP_IMPORTS], capture_output=True, text=True, check=True)
    assert "texts add [OPTIONS] FILE" in result.stdout  # the nested group's commands were shown too
    assert json.loads(result.stdout.splitlines()[-1]) == []


def test_cli_adds_flag_advice_once():
    from vtsearch.cli.hints import one_line
    from vtsearch.errors import IndexNotFoundError

    class MissingIndex(IndexNotFoundError):  # the data the hint reads, whatever the library's constructor
        def __init__(self, message, path):
            super().__init__(message)
            self.path = path

    advised = "no index at indexes/x (create one with: vtsearch index PATH --index indexes/x)"
    assert one_line(MissingIndex("no index at indexes/x", "indexes/x")) == advised
    assert one_line(MissingIndex(advised, "indexes/x")) == advised  # never twice


def test_library_errors_name_no_flag_and_the_cli_adds_the_advice(run, built, image_folder, monkeypatch):
    """Library messages suit every caller (the HTTP server too); the CLI adds the flags."""
    import torch
    from sqlalchemy.exc import DatabaseError

    from vtsearch import EncoderSpec, Index
    from vtsearch.cli.hints import one_line
    from vtsearch.device import resolve_device
    from vtsearch.errors import ModelMismatchError, VtsearchError
    from vtsearch.store.catalog.guard import catalog_error

    with pytest.raises(ModelMismatchError) as mismatch:
        Index.open_or_create(built, EncoderSpec("ViT-B-16", "openai"))
    result = run("index", image_folder, "--index", built, "--model", "ViT-B-16", "--pretrained", "openai")
    assert result.stderr.strip() == (f"Error: {mismatch.value}; "
                                     "omit --model to use the index's own model, or choose another --index")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(VtsearchError) as no_gpu:
        resolve_device("cuda")
    result = run("search", "x", "--index", built, "--device", "cuda")
    assert result.stderr.strip() == "Error: --device cuda was asked for, but no CUDA GPU is available"

    damaged = catalog_error("idx/catalog.sqlite", DatabaseError("SELECT 1", {}, Exception("file is not a database")))
    assert one_line(damaged) == f"{damaged}; restore it from a backup, or index again into a new --index"
    for error in (mismatch.value, no_gpu.value, damaged):
        assert "--" not in str(error) and "vtsearch " not in str(error)
