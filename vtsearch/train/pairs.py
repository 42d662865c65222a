"""Captioned image sets (PAIRS) for training and evaluating the reranker.

Three formats, told apart by their content:

* JSON Lines: one ``{"image": "path", "caption": "..."}`` per line (``"captions": [...]``
  also accepted); relative paths are relative to the file's folder (or ``images_root``).
* COCO captions JSON: ``{"images": [{"id", "file_name"}], "annotations": [{"image_id",
  "caption"}]}``; paths are relative to ``images_root`` (default: the file's folder).
* The Karpathy split JSON used for COCO and Flickr30k: ``{"images": [{"filepath"?,
  "filename", "split", "sentences": [{"raw"}]}]}``; ``split`` picks one split
  (``train`` includes ``restval``, as is customary).

``resolve_pairs`` maps the pairs' images to an index's ids (leaving out, and naming, the
images it does not hold); ``split_by_image`` holds out a share of the images for validation,
chosen by ``validation_images`` from the files' names, so that whoever trains the model an index
uses can leave the same images out of its training (``scripts/train_clip.py`` does).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from ..errors import VtsearchError

if TYPE_CHECKING:
    from ..index import Index


@dataclass(frozen=True)
class Pair:
    image: str  # absolute path
    caption: str


@dataclass(frozen=True)
class ResolvedPairs:
    """The pairs whose image is in the index, as parallel lists, and the images that are not."""

    captions: list[str]
    image_ids: list[int]  # the catalog id of each caption's image
    images: list[str]  # the absolute path of each caption's image
    missing: list[str]  # sorted paths of images not (successfully) indexed


def load_pairs(path: str | os.PathLike[str], images_root: str | os.PathLike[str] | None = None,
               split: str | None = None) -> list[Pair]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise VtsearchError(f"cannot read pairs file {path}: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise VtsearchError(f"pairs file {path} is not UTF-8 text ({error.reason} at byte {error.start})") from None
    root = Path(images_root) if images_root else path.parent
    stripped = text.lstrip()
    if not stripped:
        raise VtsearchError(f"pairs file {path} is empty")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("annotations"), list) and isinstance(data.get("images"), list):
        pairs = _coco(data, root, path)
    elif isinstance(data, dict) and isinstance(data.get("images"), list):
        pairs = _karpathy(data, root, path, split)
    elif data is None or isinstance(data, dict):
        pairs = _json_lines(text, root, path)
    else:
        raise VtsearchError(f"{path}: expected JSON Lines, COCO captions or a Karpathy split JSON")
    if not pairs:
        raise VtsearchError(f"{path} holds no captioned images" + (f" in split {split!r}" if split else ""))
    return pairs


def _absolute(root: Path, relative: str) -> str:
    return os.path.abspath(os.path.join(root, os.path.expanduser(relative)))


def _string(value: Any, where: str, what: str) -> str:
    """``value`` when it is a non-empty string; else an error naming where it was found."""
    if not isinstance(value, str) or not value.strip():
        shown = repr(value) if isinstance(value, str) else f"a JSON {_json_kind(value)}"
        raise VtsearchError(f"{where}: {what} must be a non-empty string, not {shown}")
    return value


def _json_kind(value: Any) -> str:
    kinds = {str: "string", bool: "boolean", int: "number", float: "number", list: "array", dict: "object",
             type(None): "null"}
    return kinds.get(type(value), type(value).__name__)


def _json_lines(text: str, root: Path, path: Path) -> list[Pair]:
    pairs = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict) or "image" not in record or not (record.get("captions") or "caption" in record):
            raise VtsearchError(f'{where}: expected {{"image": ..., "caption": ...}}')
        image = _string(record["image"], where, '"image"')
        captions = record.get("captions") or [record["caption"]]
        if not isinstance(captions, list):
            raise VtsearchError(f'{where}: "captions" must be a list of strings, not a JSON {_json_kind(captions)}')
        pairs.extend(Pair(_absolute(root, image), _string(caption, where, "a caption").strip())
                     for caption in captions)
    return pairs


def _coco(data: dict, root: Path, path: Path) -> list[Pair]:
    files = {}
    for number, image in enumerate(data["images"]):
        where = f"{path}: images[{number}]"
        if not isinstance(image, dict) or "id" not in image:
            raise VtsearchError(f'{where}: expected {{"id": ..., "file_name": ...}}')
        files[image["id"]] = _string(image.get("file_name"), where, '"file_name"')
    pairs = []
    for number, note in enumerate(data["annotations"]):
        if not isinstance(note, dict):
            raise VtsearchError(f'{path}: annotations[{number}]: expected {{"image_id": ..., "caption": ...}}')
        if note.get("image_id") in files:
            caption = _string(note.get("caption"), f"{path}: annotations[{number}]", '"caption"')
            pairs.append(Pair(_absolute(root, files[note["image_id"]]), caption.strip()))
    return pairs


def _karpathy(data: dict, root: Path, path: Path, split: str | None) -> list[Pair]:
    wanted = {split, "restval"} if split == "train" else {split}
    pairs = []
    for number, image in enumerate(data["images"]):
        where = f"{path}: images[{number}]"
        if not isinstance(image, dict):
            raise VtsearchError(f'{where}: expected {{"filename": ..., "sentences": [...]}}')
        if split is not None and image.get("split") not in wanted:
            continue
        folder = image.get("filepath", "")
        relative = os.path.join(_string(folder, where, '"filepath"') if folder else "",
                                _string(image.get("filename"), where, '"filename"'))
        sentences = image.get("sentences", [])
        if not isinstance(sentences, list) or not all(isinstance(sentence, dict) for sentence in sentences):
            raise VtsearchError(f'{where}: "sentences" must be a list of {{"raw": ...}} objects')
        for sentence in sentences:
            pairs.append(Pair(_absolute(root, relative), _string(sentence.get("raw"), where, '"raw"').strip()))
    return pairs


def resolve_pairs(index: "Index", pairs: Sequence[Pair]) -> ResolvedPairs:
    """Map pair images to catalog ids; images that are not indexed are reported."""
    ids = index.image_ids(sorted({pair.image for pair in pairs}))
    kept = [pair for pair in pairs if pair.image in ids]
    missing = sorted({pair.image for pair in pairs if pair.image not in ids})
    return ResolvedPairs([pair.caption for pair in kept], [ids[pair.image] for pair in kept],
                         [pair.image for pair in kept], missing)


def validation_images(images: Iterable[str], fraction: float, seed: int) -> set[str]:
    """The images ``train-reranker`` validates on instead of training on: those whose file
    name (not its folder, so moving the set keeps the split) hashes with ``seed`` below
    ``fraction`` of the range, about ``fraction`` of them; the lowest one where two or more
    images give the hash too few to pick any. Decided by the names, the split is known before
    there is an index: a model trained without these images lets validation see stage 1 as it
    is on images new to it, which is what the fused weight is fitted for."""
    distinct = sorted(set(images))
    hashes = {image: _name_hash(image, seed) for image in distinct}
    chosen = {image for image in distinct if hashes[image] < fraction * 2.0 ** 64}
    if not chosen and len(distinct) > 1 and fraction > 0:
        chosen = {min(distinct, key=hashes.__getitem__)}
    return chosen


def _name_hash(image: str, seed: int) -> int:
    digest = hashlib.blake2b(f"{seed}/{os.path.basename(image)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def split_by_image(images: Sequence[str], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Row numbers to train on and to validate on: the ``validation_images`` with all their
    captions are held out, so validation never sees a training image."""
    chosen = validation_images(images, fraction, seed)
    train = [row for row, image in enumerate(images) if image not in chosen]
    val = [row for row, image in enumerate(images) if image in chosen]
    return train, val
