"""Stage: scan. Walk the given paths and list candidate image files.

A candidate is any file whose extension Pillow registers (any letter case). Folders are
walked recursively in sorted order; symbolic links are followed, but a folder already
visited (by device and inode) is never entered twice, so link loops end. A file reached
twice through links is listed once. Broken links and entries that cannot be read are
reported as unreadable, with the reason.
"""

from __future__ import annotations

import os
import stat as stat_module
from functools import lru_cache
from typing import Iterable

from PIL import Image

from ..decode.formats import enable_optional_plugins
from ..records import ScannedFile, ScanReport


@lru_cache(maxsize=1)
def image_extensions() -> frozenset[str]:
    """Lower-case extensions (with the dot) that Pillow can open."""
    Image.init()
    enable_optional_plugins()
    return frozenset(ext.lower() for ext in Image.registered_extensions())


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in image_extensions()


def scan(paths: Iterable[str | bytes | os.PathLike]) -> ScanReport:
    """List candidate image files under ``paths`` (files or folders). Paths are ``str``
    as ``os.fsdecode`` gives them: a name that is not UTF-8 keeps its bytes (surrogates)."""
    walk = _Walk()
    for given in paths:
        path = os.path.abspath(os.path.expanduser(os.fsdecode(given)))
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            walk.missing.append(path)
            continue
        except OSError as error:
            walk.unreadable.append((path, error.strerror or str(error)))
            continue
        walk.roots.append(path)
        walk.visit(path, stat)
    return ScanReport(candidates=walk.candidates, not_images=walk.not_images, missing=walk.missing,
                      unreadable=walk.unreadable, roots=walk.roots)


class _Walk:
    """One scan's findings; files and folders reached twice (links, bind mounts) count once."""

    def __init__(self) -> None:
        self.candidates: list[ScannedFile] = []
        self.not_images = 0
        self.missing: list[str] = []
        self.unreadable: list[tuple[str, str]] = []
        self.roots: list[str] = []
        self.seen_dirs: set[tuple[int, int]] = set()
        self.seen_files: set[tuple[int, int]] = set()

    def visit(self, path: str, stat: os.stat_result) -> None:
        if _is_dir(stat):
            self.visit_dir(path, stat)
        elif _is_regular(stat):
            self.visit_file(path, stat)

    def visit_file(self, path: str, stat: os.stat_result) -> None:
        if not is_image_name(path):
            self.not_images += 1
            return
        key = (stat.st_dev, stat.st_ino)
        if key in self.seen_files:
            return
        self.seen_files.add(key)
        self.candidates.append(ScannedFile(path=path, size=stat.st_size, mtime_ns=stat.st_mtime_ns))

    def visit_dir(self, path: str, stat: os.stat_result) -> None:
        key = (stat.st_dev, stat.st_ino)
        if key in self.seen_dirs:
            return
        self.seen_dirs.add(key)
        try:
            with os.scandir(path) as entries:
                children = sorted(entries, key=lambda entry: entry.name)
        except OSError as error:
            self.unreadable.append((path, error.strerror or str(error)))
            return
        for entry in children:
            try:
                child_stat = entry.stat(follow_symlinks=True)
            except OSError as error:  # dangling link, vanished file, no permission
                if entry.is_symlink() and isinstance(error, FileNotFoundError):
                    self.unreadable.append((entry.path, "broken symbolic link"))
                elif not isinstance(error, FileNotFoundError):  # a vanished file is simply gone
                    self.unreadable.append((entry.path, error.strerror or str(error)))
                continue
            self.visit(entry.path, child_stat)


def _is_dir(stat: os.stat_result) -> bool:
    return stat_module.S_ISDIR(stat.st_mode)


def _is_regular(stat: os.stat_result) -> bool:
    return stat_module.S_ISREG(stat.st_mode)


__all__ = ["scan", "image_extensions", "is_image_name"]
