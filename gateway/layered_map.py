"""A read-only mapping that a new config can derive from the old one without copying it.

The caller-key index holds 100,000 entries and more; a revision usually changes one. Copying
the whole dict for every revision costs milliseconds on the event loop, so a `LayeredMap`
keeps a large base dict that consecutive configs share, plus a small overlay of what changed
since the base was built (a tombstone marks a removed entry). Deriving the next map copies
only the overlay. When the overlay outgrows a fraction of the base, the two are merged into a
new base, so the copying per change stays bounded (amortised) and lookups stay two dict
probes at most. Nothing mutates a map once it is built: configs sharing a base never see
each other's changes.
"""

import enum
from collections.abc import Iterator, Mapping
from typing import Generic, Literal, TypeVar, overload

Value = TypeVar("Value")
Default = TypeVar("Default")

# The overlay is merged into a new base when it holds more than this share of the base (and
# more than MIN_OVERLAY entries): copying the overlay per change stays small, and the full
# copy of the base happens once per that many changes.
MERGE_FRACTION = 32
MIN_OVERLAY = 256


class _Tombstone(enum.Enum):
    DELETED = 0


DELETED = _Tombstone.DELETED
_ABSENT = object()


class LayeredMap(Mapping[str, Value], Generic[Value]):
    __slots__ = ("_base", "_length", "_overlay")

    def __init__(
        self,
        base: dict[str, Value] | None = None,
        overlay: dict[str, Value | Literal[_Tombstone.DELETED]] | None = None,
        length: int | None = None,
    ) -> None:
        self._base: dict[str, Value] = base if base is not None else {}
        self._overlay: dict[str, Value | Literal[_Tombstone.DELETED]] = overlay if overlay is not None else {}
        self._length = len(self._base) if length is None else length

    @overload
    def get(self, key: str, /) -> Value | None: ...
    @overload
    def get(self, key: str, default: Value | Default, /) -> Value | Default: ...

    def get(self, key: str, default: object = None, /) -> object:
        changed = self._overlay.get(key, _ABSENT)
        if changed is _ABSENT:
            return self._base.get(key, default)
        return default if changed is DELETED else changed

    def __getitem__(self, key: str) -> Value:
        changed = self._overlay.get(key, _ABSENT)
        if changed is _ABSENT:
            return self._base[key]
        if changed is DELETED:
            raise KeyError(key)
        return changed  # type: ignore[return-value]

    def __contains__(self, key: object) -> bool:
        changed = self._overlay.get(key, _ABSENT)  # type: ignore[call-overload]
        if changed is _ABSENT:
            return key in self._base
        return changed is not DELETED

    def __iter__(self) -> Iterator[str]:
        overlay = self._overlay
        for key in self._base:
            if key not in overlay:
                yield key
        for key, changed in overlay.items():
            if changed is not DELETED:
                yield key

    def __len__(self) -> int:
        return self._length

    def with_changes(self, changes: Mapping[str, Value | None]) -> "LayeredMap[Value]":
        """A new map with `changes` applied (None removes an entry); this one is unchanged."""
        overlay = self._overlay.copy()
        length = self._length
        for key, value in changes.items():
            present = key in self  # each key appears once in `changes`, so this map's state is the one before
            if value is None:
                if key in self._base:
                    overlay[key] = DELETED
                else:
                    overlay.pop(key, None)
                length -= present
            else:
                overlay[key] = value
                length += not present
        if len(overlay) > max(MIN_OVERLAY, len(self._base) // MERGE_FRACTION):
            return LayeredMap(self._merged(overlay), None, length)
        return LayeredMap(self._base, overlay, length)

    def _merged(self, overlay: dict[str, Value | Literal[_Tombstone.DELETED]]) -> dict[str, Value]:
        base = self._base.copy()
        for key, changed in overlay.items():
            if changed is DELETED:
                base.pop(key, None)
            else:
                base[key] = changed
        return base

    def shares_base_with(self, other: "LayeredMap[Value]") -> bool:
        """Whether both maps read the same base dict (nothing was copied between them)."""
        return self._base is other._base

    @property
    def overlay_size(self) -> int:
        return len(self._overlay)
