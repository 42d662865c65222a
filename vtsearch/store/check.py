"""``vtsearch check``: do the catalog, the FAISS index and the region store agree?

The catalog is the source of truth; everything else is checked against it:

- the SQLite file passes its own quick check;
- every indexed row has an embedding of the manifest's width;
- ``ann.faiss`` reflects the catalog's latest revision and holds exactly the indexed ids,
  once each, with the catalog's vectors (compared on a sample when FAISS can return them);
- every indexed row points at its own, complete region row (when regions are stored).

Left-overs of a killed run are noted but are not problems: region rows no catalog row
points at, a torn row at the end of the region file (temporary files are not looked
at; ``repair`` and the next writer delete them), and an ``ann.faiss`` that is behind the
catalog but sound (it reflects an older revision, no id twice: the run was killed
before its final save), which the next open rebuilds. ``repair`` fixes
what can be fixed without the images: the FAISS index is rebuilt from the catalog, the
left-overs are cleared (unused rows stay until the store is compacted), and rows whose
embedding or regions are lost are turned into errors that the next ``vtsearch index`` run
re-encodes under the same id.
A damaged catalog cannot be repaired here: restore it from a backup or index again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .ann import AnnIndex
from .catalog import Catalog
from .regions import RegionStore

VECTOR_SAMPLE = 1000
LOST = "lost: {what} missing from the index; the next vtsearch index run re-encodes it"


@dataclass(frozen=True)
class Problem:
    part: str  # catalog, ann, regions
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"part": self.part, "message": self.message}


@dataclass
class CheckReport:
    images: int = 0
    ann_vectors: int = 0
    region_rows: int = 0
    dead_region_rows: int = 0  # rows no catalog row points at (space, not an error)
    torn_region_bytes: int = 0  # a partial row at the end of the region file (harmless)
    problems: list[Problem] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)  # drift a killed run leaves; fixed by itself
    repaired: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "images": self.images, "ann_vectors": self.ann_vectors,
            "region_rows": self.region_rows, "dead_region_rows": self.dead_region_rows,
            "torn_region_bytes": self.torn_region_bytes,
            "problems": [problem.to_dict() for problem in self.problems],
            "notices": self.notices, "repaired": self.repaired,
        }


@dataclass
class Findings:
    """What the checks found, and what a repair has to do about it."""

    report: CheckReport
    rebuild_ann: bool = False
    cut_region_tail: bool = False
    reencode: dict[int, str] = field(default_factory=dict)  # id → what was lost

    def problem(self, part: str, message: str) -> None:
        self.report.problems.append(Problem(part, message))

    def notice(self, message: str) -> None:
        self.report.notices.append(message)


def inspect(catalog: Catalog, ann: AnnIndex, embed_dim: int, store: RegionStore | None) -> Findings:
    """Run every check; changes nothing."""
    findings = Findings(CheckReport())
    for message in catalog.integrity_problems():
        findings.problem("catalog", f"{catalog.location}: {message}")
    if findings.report.problems:
        return findings  # nothing read from a damaged catalog can be trusted

    layout = list(catalog.indexed_layout())
    findings.report.images = len(layout)
    _check_embeddings(layout, embed_dim, findings)
    _check_ann(catalog, ann, layout, embed_dim, findings)
    if store is not None:
        _check_regions(store, layout, findings)
    return findings


def _check_embeddings(layout: list[tuple[int, int, int | None]], embed_dim: int, findings: Findings) -> None:
    expected = embed_dim * 4
    bad = [row_id for row_id, length, _row in layout if length != expected]
    if bad:
        findings.problem("catalog", f"{len(bad)} indexed rows lack a {embed_dim}-wide embedding "
                                    f"(ids {_sample(bad)})")
        findings.reencode.update({row_id: "embedding" for row_id in bad})


def _check_ann(catalog: Catalog, ann: AnnIndex, layout: list[tuple[int, int, int | None]],
               embed_dim: int, findings: Findings) -> None:
    findings.report.ann_vectors = len(ann)
    if ann.dim != embed_dim:
        findings.problem("ann", f"ann.faiss holds {ann.dim}-wide vectors, the manifest says {embed_dim}")
        findings.rebuild_ann = True
        return
    revision, ann_revision = catalog.revision(), catalog.ann_revision()
    held = ann.ids()
    unique, counts = np.unique(held, return_counts=True)
    if 0 <= ann_revision < revision:  # a run killed before its final save: rebuilt on the next open
        findings.rebuild_ann = True
        if _check_doubled(unique, counts, findings):  # sound: no revision ever held an id twice
            findings.notice(f"ann.faiss reflects catalog revision {ann_revision}, the catalog is at "
                            f"{revision} (a run was interrupted); the next open or a repair rebuilds it")
        return
    if ann_revision != revision:
        findings.problem("ann", f"ann.faiss reflects catalog revision {ann_revision}, "
                                f"the catalog is at {revision}")
        findings.rebuild_ann = True
    expected = np.fromiter((row_id for row_id, _length, _row in layout), dtype=np.int64)
    missing = np.setdiff1d(expected, unique)
    extra = np.setdiff1d(unique, expected)
    for name, ids in (("missing from", missing), ("not in the catalog but in", extra)):
        if len(ids):
            findings.problem("ann", f"{len(ids)} ids {name} ann.faiss (ids {_sample(ids.tolist())})")
            findings.rebuild_ann = True
    _check_doubled(unique, counts, findings)
    if not findings.rebuild_ann and len(expected):
        sample = expected[:: max(1, len(expected) // VECTOR_SAMPLE)]
        stored = ann.reconstruct(sample)
        if stored is not None:
            differ = np.abs(stored - catalog.vectors(sample.tolist(), embed_dim)).max(axis=1) > 1e-4
            if differ.any():
                findings.problem("ann", f"{int(differ.sum())} of {len(sample)} sampled vectors in "
                                        "ann.faiss differ from the catalog's")
                findings.rebuild_ann = True


def _check_doubled(unique: np.ndarray, counts: np.ndarray, findings: Findings) -> bool:
    """No id held twice (True), or a problem."""
    doubled = unique[counts > 1]
    if len(doubled):
        findings.problem("ann", f"{len(doubled)} ids held more than once by ann.faiss "
                                f"(ids {_sample(doubled.tolist())})")
        findings.rebuild_ann = True
    return not len(doubled)


def _check_regions(store: RegionStore, layout: list[tuple[int, int, int | None]], findings: Findings) -> None:
    rows = len(store)
    findings.report.region_rows = rows
    findings.report.torn_region_bytes = store.torn_bytes()
    findings.cut_region_tail = findings.report.torn_region_bytes > 0
    owners: dict[int, int] = {}
    lost: list[int] = []
    for row_id, _length, region_row in layout:
        if region_row is None or not 0 <= region_row < rows or region_row in owners:
            lost.append(row_id)
        else:
            owners[region_row] = row_id
    if lost:
        findings.problem("regions", f"{len(lost)} indexed rows point at no region row of their own "
                                    f"(ids {_sample(lost)})")
        findings.reencode.update({row_id: "region features" for row_id in lost})
    findings.report.dead_region_rows = rows - len(owners)


def _sample(ids: list[int], shown: int = 5) -> str:
    text = ", ".join(str(i) for i in ids[:shown])
    return text + (", ..." if len(ids) > shown else "")


__all__ = ["CheckReport", "Findings", "Problem", "inspect", "LOST"]
