"""Progress bars for long loops (tqdm, off when ``progress=False``)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

__all__ = ["progress_iter"]


def progress_iter(it: Iterable[T], *, total: int | None = None, desc: str = "", enabled: bool = True) -> Iterator[T]:
    """Wrap ``it`` in a tqdm bar when ``enabled`` (auto notebook/terminal), else return it unchanged."""
    if not enabled:
        yield from it
        return
    from tqdm.auto import tqdm

    yield from tqdm(it, total=total, desc=desc, leave=False)
