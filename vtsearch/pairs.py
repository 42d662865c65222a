"""Captioned image sets (PAIRS) for training and evaluating the reranker.

Three formats, told apart by their content:

* JSON Lines: one ``{"image": "path", "caption": "..."}`` per line (``"captions": [...]``
  also accepted); relative paths are relative to the file's folder (or ``images_root``).
* COCO captions JSON: ``{"images": [{"id", "file_name"}], "annotations": [{"image_id",
  "caption"}]}``; paths are relative to ``images_root`` (default: the file's folder).
* The Karpathy split JSON used for COCO and Flickr30k: ``{"images": [{"filepath"?,
  "filename", "split", "sentences": [{"raw"}]}]}``; ``split`` picks one split
  (``train`` includes ``restval``, as is customary).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import VtsearchError


@dataclass(frozen=True)
class Pair:
    image: str  # absolute path
    caption: str


def load_pairs(path: str | os.PathLike[str], images_root: str | os.PathLike[str] | None = None,
               split: str | None = None) -> list[Pair]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise VtsearchError(f"cannot read pairs file {path}: {error.strerror}") from None
    root = Path(images_root) if images_root else path.parent
    stripped = text.lstrip()
    if not stripped:
        raise VtsearchError(f"pairs file {path} is empty")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if isinstance(data, dict) and "annotations" in data and "images" in data:
        pairs = _coco(data, root)
    elif isinstance(data, dict) and isinstance(data.get("images"), list):
        pairs = _karpathy(data, root, split)
    elif data is None or isinstance(data, dict):
        pairs = _json_lines(text, root, path)
    else:
        raise VtsearchError(f"{path}: expected JSON Lines, COCO captions or a Karpathy split JSON")
    if not pairs:
        raise VtsearchError(f"{path} holds no captioned images" + (f" in split {split!r}" if split else ""))
    return pairs


def _absolute(root: Path, relative: str) -> str:
    return os.path.abspath(os.path.join(root, os.path.expanduser(relative)))


def _json_lines(text: str, root: Path, path: Path) -> list[Pair]:
    pairs = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            image = record["image"]
            captions = record.get("captions") or [record["caption"]]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise VtsearchError(
                f'{path}, line {number}: expected {{"image": ..., "caption": ...}}'
            ) from None
        pairs.extend(Pair(_absolute(root, image), str(caption).strip()) for caption in captions)
    return pairs


def _coco(data: dict, root: Path) -> list[Pair]:
    files = {image["id"]: image["file_name"] for image in data["images"]}
    return [
        Pair(_absolute(root, files[note["image_id"]]), note["caption"].strip())
        for note in data["annotations"] if note.get("image_id") in files
    ]


def _karpathy(data: dict, root: Path, split: str | None) -> list[Pair]:
    wanted = {split, "restval"} if split == "train" else {split}
    pairs = []
    for image in data["images"]:
        if split is not None and image.get("split") not in wanted:
            continue
        relative = os.path.join(image.get("filepath", ""), image["filename"])
        for sentence in image.get("sentences", []):
            pairs.append(Pair(_absolute(root, relative), sentence["raw"].strip()))
    return pairs
