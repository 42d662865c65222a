import os

from PIL import Image

from vtsearch.build.scan import image_extensions, scan


def test_pillow_extensions_in_any_case_are_candidates(tmp_path):
    for name in ("a.jpg", "b.JPEG", "c.Png", "d.webp", "e.TIFF", "f.bmp", "g.gif", "h.tga"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "readme.md").write_text("x")
    (tmp_path / "data.csv").write_text("x")
    report = scan([tmp_path])
    assert sorted(os.path.basename(c.path) for c in report.candidates) == [
        "a.jpg", "b.JPEG", "c.Png", "d.webp", "e.TIFF", "f.bmp", "g.gif", "h.tga"]
    assert report.not_images == 2
    assert {".jpg", ".png", ".psd", ".tga"} <= image_extensions()


def test_symlink_loops_end_and_linked_files_count_once(tmp_path):
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(root / "a" / "x.png")
    os.symlink(root, root / "a" / "loop")  # a loop back to the top
    os.symlink(root / "a" / "x.png", root / "alias.png")
    os.symlink(tmp_path / "nowhere", root / "dangling.png")
    report = scan([root])
    assert len(report.candidates) == 1
    assert report.unreadable == [(str(root / "dangling.png"), "broken symbolic link")]


def test_directory_named_like_an_image_is_walked(tmp_path):
    folder = tmp_path / "album.jpg"
    folder.mkdir()
    Image.new("RGB", (4, 4)).save(folder / "inside.png")
    report = scan([tmp_path])
    assert [os.path.basename(c.path) for c in report.candidates] == ["inside.png"]


def test_missing_paths_are_reported(tmp_path):
    report = scan([tmp_path / "nope"])
    assert report.missing == [str(tmp_path / "nope")]
    assert report.candidates == []


def test_single_file_and_stat_are_recorded(tmp_path):
    path = tmp_path / "one.png"
    Image.new("RGB", (4, 4)).save(path)
    [candidate] = scan([path]).candidates
    assert candidate.path == str(path)
    assert candidate.size == path.stat().st_size
    assert candidate.mtime_ns == path.stat().st_mtime_ns
