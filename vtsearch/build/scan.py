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

from ..records import ScannedFile, ScanReport


@lru_cache(maxsize=1)
def image_extensions() -> frozenset[str]:
    """Lower-case extensions (with the dot) that Pillow can open."""
    Image.init()
    return frozenset(ext.lower() for ext in Image.registered_extensions())


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in image_extensions()


def scan(paths: Iterable[str | os.PathLike[str]]) -> ScanReport:
    """List candidate image files under ``paths`` (files or folders)."""
    candidates: list[ScannedFile] = []
    not_images = 0
    missing: list[str] = []
    unreadable: list[tuple[str, str]] = []
    roots: list[str] = []
    seen_dirs: set[tuple[int, int]] = set()
    seen_files: set[tuple[int, int]] = set()

    def visit_file(path: str, stat: os.stat_result) -> None:
        nonlocal not_images
        if not is_image_name(path):
            not_images += 1
            return
        key = (stat.st_dev, stat.st_ino)
        if key in seen_files:
            return
        seen_files.add(key)
        candidates.append(ScannedFile(path=path, size=stat.st_size, mtime_ns=stat.st_mtime_ns))

    def visit_dir(path: str, stat: os.stat_result) -> None:
        key = (stat.st_dev, stat.st_ino)
        if key in seen_dirs:
            return
        seen_dirs.add(key)
        try:
            with os.scandir(path) as entries:
                children = sorted(entries, key=lambda entry: entry.name)
        except OSError as error:
            unreadable.append((path, error.strerror or str(error)))
            return
        for entry in children:
            try:
                child_stat = entry.stat(follow_symlinks=True)
            except OSError as error:  # dangling link, vanished file, no permission
                if entry.is_symlink() and isinstance(error, FileNotFoundError):
                    unreadable.append((entry.path, "broken symbolic link"))
                elif not isinstance(error, FileNotFoundError):  # a vanished file is simply gone
                    unreadable.append((entry.path, error.strerror or str(error)))
                continue
            if _is_dir(child_stat):
                visit_dir(entry.path, child_stat)
            elif _is_regular(child_stat):
                visit_file(entry.path, child_stat)

    for given in paths:
        path = os.path.abspath(os.path.expanduser(os.fspath(given)))
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            missing.append(path)
            continue
        except OSError as error:
            unreadable.append((path, error.strerror or str(error)))
            continue
        roots.append(path)
        if _is_dir(stat):
            visit_dir(path, stat)
        elif _is_regular(stat):
            visit_file(path, stat)

    return ScanReport(
        candidates=candidates, not_images=not_images, missing=missing, unreadable=unreadable,
        roots=roots,
    )


def _is_dir(stat: os.stat_result) -> bool:
    return stat_module.S_ISDIR(stat.st_mode)


def _is_regular(stat: os.stat_result) -> bool:
    return stat_module.S_ISREG(stat.st_mode)


__all__ = ["scan", "image_extensions", "is_image_name"]
