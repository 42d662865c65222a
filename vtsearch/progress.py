"""How long runs report progress: the CLI shows a bar, the library stays silent."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """Receives progress of a long run; the CLI shows a bar, the library stays silent."""

    def start(self, total: int) -> None: ...

    def advance(self, count: int) -> None: ...

    def close(self) -> None: ...


class NoProgress:
    def start(self, total: int) -> None:
        pass

    def advance(self, count: int) -> None:
        pass

    def close(self) -> None:
        pass
