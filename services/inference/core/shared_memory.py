"""System shared memory regions a client on this host registered (Triton's extension of the Open Inference
Protocol): POSIX shared memory objects mapped once, from which inputs are read in place and into which outputs
are written, so a frame is never copied through gRPC. Transport-free; the gRPC adapter maps its errors."""
from __future__ import annotations

import mmap
import os
import threading
from dataclasses import dataclass
from pathlib import Path

# Where Linux keeps POSIX shared memory objects: shm_open("/name") opens /dev/shm/name.
SHM_DIR = Path("/dev/shm")
# Each region is one mapping of this process: a bound keeps a misbehaving client from exhausting them.
DEFAULT_MAX_REGIONS = 1024


class SharedMemoryError(Exception):
    """Base of the registry's refusals; each message names the region or key."""


class RegionNotFound(SharedMemoryError, LookupError):
    """No region is registered under that name."""


class KeyNotFound(SharedMemoryError, LookupError):
    """No shared memory object exists under that key."""


class RegionExists(SharedMemoryError):
    """A region is already registered under that name."""


class InvalidRegion(SharedMemoryError, ValueError):
    """A key that is no shared memory object name, or a range outside the object or the region."""


class TooManyRegions(SharedMemoryError):
    """The registry holds as many regions as it accepts."""


@dataclass(frozen=True)
class RegionStatus:
    name: str
    key: str
    offset: int
    byte_size: int


@dataclass(frozen=True)
class _Region:
    status: RegionStatus
    mapping: mmap.mmap  # the object from its start to the region's end (mmap offsets must be page-aligned)


def shm_path(key: str) -> Path:
    """The file of the POSIX shared memory object `key` ("/name" or "name"). Anything else, such as a path
    elsewhere ("/../etc/passwd"), is refused: a client names an object, never a file of the server's."""
    name = key[1:] if key.startswith("/") else key
    if not name or "/" in name or "\0" in name or name in (".", ".."):
        raise InvalidRegion(f"shared memory key {key!r} is not the name of a POSIX shared memory object")
    return SHM_DIR / name


def _map_object(key: str, end: int) -> mmap.mmap:
    """Maps the object `key` read/write from its start to `end` (offset + byte_size of the region)."""
    try:
        # O_NOFOLLOW: a symlink planted in /dev/shm must not lead the server to another file.
        fd = os.open(shm_path(key), os.O_RDWR | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise KeyNotFound(f"no shared memory object with key {key!r}") from None
    except OSError as exc:
        raise InvalidRegion(f"cannot open shared memory key {key!r}: {exc.strerror}") from None
    try:
        size = os.fstat(fd).st_size
        if end > size:
            raise InvalidRegion(f"region ends at byte {end} of shared memory key {key!r}, which has {size}")
        return mmap.mmap(fd, end, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)  # the mapping stays valid without the descriptor


def _close(mapping: mmap.mmap) -> None:
    try:
        mapping.close()
    except BufferError:
        # A request still holds a view of it (its input is being inferred): the mapping is unmapped when that
        # last view is released. Memory-safe either way; the region is already gone from the registry.
        pass


class SharedMemoryRegistry:
    """Registered regions by name. Thread safe: gRPC calls register, read and write concurrently."""

    def __init__(self, max_regions: int = DEFAULT_MAX_REGIONS) -> None:
        self.max_regions = max_regions
        self._regions: dict[str, _Region] = {}
        self._lock = threading.Lock()

    def register(self, name: str, key: str, offset: int, byte_size: int) -> RegionStatus:
        if not name:
            raise InvalidRegion("a shared memory region needs a name")
        if offset < 0 or byte_size <= 0:
            raise InvalidRegion(f"region '{name}': offset {offset} and byte size {byte_size} must be >= 0 and > 0")
        with self._lock:
            # Checked before mapping (and again after), so a duplicate never maps the object at all.
            self._check_room(name)
        mapping = _map_object(key, offset + byte_size)
        status = RegionStatus(name, key, offset, byte_size)
        with self._lock:
            try:
                self._check_room(name)
            except SharedMemoryError:
                _close(mapping)
                raise
            self._regions[name] = _Region(status, mapping)
        return status

    def _check_room(self, name: str) -> None:
        if name in self._regions:
            raise RegionExists(f"shared memory region '{name}' is already registered")
        if len(self._regions) >= self.max_regions:
            raise TooManyRegions(f"{self.max_regions} shared memory regions are registered; unregister some first")

    def status(self, name: str = "") -> list[RegionStatus]:
        """One region's status, or with no name every region's."""
        with self._lock:
            if not name:
                return [r.status for r in self._regions.values()]
            return [self._region(name).status]

    def unregister(self, name: str = "") -> None:
        """Unregisters one region, or with no name every region. Requests already reading it keep their view."""
        with self._lock:
            if not name:
                removed = list(self._regions.values())
                self._regions.clear()
            else:
                removed = [self._region(name)]
                del self._regions[name]
        for region in removed:
            _close(region.mapping)

    def close(self) -> None:
        """Every region unregistered (at server stop)."""
        self.unregister()

    def read(self, name: str, offset: int, byte_size: int) -> memoryview:
        """A read-only view of `byte_size` bytes at `offset` in the region, without copying: np.frombuffer on
        it is the client's memory itself. The view (and arrays over it) keep the mapping alive."""
        with self._lock:
            region = self._region(name)
            start = self._start(region, offset, byte_size)
            return memoryview(region.mapping).toreadonly()[start:start + byte_size]

    def write(self, name: str, offset: int, data: bytes, byte_size: int | None = None) -> None:
        """Copies `data` into the region at `offset`; byte_size: the room the request set aside there
        (default: to the region's end), which `data` must fit."""
        with self._lock:  # held while copying, so an unregister cannot close the mapping mid-write
            region = self._region(name)
            room = region.status.byte_size - offset if byte_size is None else byte_size
            start = self._start(region, offset, room)
            if len(data) > room:
                raise InvalidRegion(f"{len(data)} bytes do not fit the {room} bytes set aside in shared memory "
                                    f"region '{name}'")
            region.mapping[start:start + len(data)] = data

    def _region(self, name: str) -> _Region:
        region = self._regions.get(name)
        if region is None:
            raise RegionNotFound(f"no shared memory region '{name}' is registered")
        return region

    @staticmethod
    def _start(region: _Region, offset: int, byte_size: int) -> int:
        """Where [offset, offset + byte_size) of the region starts in its mapping; refused if outside it."""
        status = region.status
        if offset < 0 or byte_size < 0 or offset + byte_size > status.byte_size:
            raise InvalidRegion(f"bytes [{offset}, {offset + byte_size}) are outside shared memory region "
                                f"'{status.name}' of {status.byte_size} bytes")
        return status.offset + offset
