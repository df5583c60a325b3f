"""A cgroup per worker: memory and process count bounded for the worker's whole process tree.

rlimits are per process: ``RLIMIT_AS`` lets each of a worker's processes use the full memory
limit, and ``RLIMIT_NPROC`` counts a uid, not a sandbox. A cgroup bounds the tree as a whole.
Where the host lets the broker create cgroups, every worker gets one, under the broker's own:

    <broker's cgroup>/model-broker/worker-<host pid>
        memory: the package's memory limit plus its scratch tmpfs (tmpfs pages are charged to
                the group); no swap; on OOM (cgroup v2) the whole group is killed
        pids:   the process limit, plus one for the worker's reaper

The worker's host pid joins its group *before* the broker sends it its spec: until then it runs
only the broker's bootstrap, so every process the package ever starts is inside the group.

Both layouts are supported:

* cgroup v2: the broker's cgroup must offer ``memory`` and ``pids`` (they are enabled in its
  parent's ``cgroup.subtree_control``: a delegated subtree, as systemd's ``Delegate=yes`` gives).
  v2 allows no processes in inner nodes, so if the broker's cgroup holds the broker (and nothing
  else) the broker first moves itself into a leaf ``<cgroup>/broker``; a cgroup shared with
  other processes is not touched.
* cgroup v1 (also the "hybrid" layout, v1 controllers beside an empty v2 tree): the ``memory``
  and ``pids`` hierarchies, each at the broker's own place in it.

:meth:`Cgroups.detect` runs once per process; where a controller is missing it logs one
warning naming it, and its limit falls back to the per-process rlimits (which always apply).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import os
import re
import threading
import time
from pathlib import Path

from broker.logging import get_logger
from sandbox.protocol import WorkerLimits

CONTROLLERS = ("memory", "pids")
GROUP_PARENT = "model-broker"
BROKER_LEAF = "broker"
_REMOVE_WAIT = 2.0
_PROC_SELF = Path("/proc/self")

_log = get_logger(__name__)


class CgroupError(OSError):
    """A cgroup the host offered could not be set up; the worker is not started (fail closed)."""


@dataclasses.dataclass(frozen=True, slots=True)
class CgroupStatus:
    """What per-worker cgroups this broker uses: for the probe, the log and the README."""

    controllers: dict[str, str]  # controller -> "v1" / "v2", for the ones in use
    missing: dict[str, str]  # controller -> why it cannot be used

    @property
    def complete(self) -> bool:
        """Whether memory and process count are both bounded per worker tree."""
        return not self.missing

    def describe(self) -> str:
        """One line for people: which controllers, which version, what falls back."""
        used = ", ".join(f"{name} ({version})" for name, version in self.controllers.items())
        gaps = "; ".join(f"{name}: {why}" for name, why in self.missing.items())
        if not self.missing:
            return f"per-worker cgroups: {used}"
        fallback = f"per-worker cgroups: {used or 'none'}; missing {gaps}"
        return fallback + " (falling back to per-process rlimits)"


@dataclasses.dataclass(frozen=True, slots=True)
class _Place:
    """Where worker groups go in one hierarchy, and which controllers that gives them."""

    version: int
    own: Path  # the broker's cgroup in this hierarchy
    controllers: tuple[str, ...]

    @property
    def base(self) -> Path:
        return self.own / GROUP_PARENT


class WorkerGroup:
    """One worker's cgroup (one directory per hierarchy); removed when the worker is reaped."""

    def __init__(self, dirs: tuple[tuple[_Place, Path], ...]) -> None:
        self._dirs = dirs
        self.paths = tuple(path for _, path in dirs)
        self._lock = threading.Lock()
        self._oom_seen = False
        # The OOM counter is read after every call: kept open, a pread costs ~3 us, not ~30.
        self._oom_fd: int | None = None
        self._oom_file: Path | None = None
        for place, path in dirs:
            if "memory" in place.controllers:
                name = "memory.events" if place.version == 2 else "memory.oom_control"
                self._oom_file = path / name

    def join(self, pid: int) -> None:
        """Move ``pid`` (and so every process it starts later) into this group."""
        for _, path in self._dirs:
            _write(path / "cgroup.procs", str(pid))

    def intact(self) -> bool:
        """Whether every directory of the group still exists and still holds a process.

        Someone with the host's cgroup rights (an operator, an agent tidying up) can remove a
        group under a live worker by moving its processes out first: the worker then runs with
        no cgroup limit at all. The pool checks this around every call (one small read each).
        """
        for _, path in self._dirs:
            try:
                if not (path / "cgroup.procs").read_text().strip():
                    return False
            except OSError:
                return False
        return True

    def oom_killed(self) -> bool:
        """Whether the kernel killed a process of this group for its memory limit."""
        with self._lock:
            if self._oom_seen or self._oom_file is None:
                return self._oom_seen
            try:
                if self._oom_fd is None:
                    self._oom_fd = os.open(self._oom_file, os.O_RDONLY | os.O_CLOEXEC)
                counters = _counters(os.pread(self._oom_fd, 4096, 0).decode("ascii"))
            except OSError:
                return False
            kills = counters.get("oom_kill", 0) + counters.get("oom_group_kill", 0)
            self._oom_seen = kills > 0
            return self._oom_seen

    def remove(self, wait: float = _REMOVE_WAIT) -> bool:
        """Remove the group once its last process is gone; ``False`` if it stayed busy.

        The worker's processes die with its reaper, but the kernel takes a moment to tear a PID
        namespace down, hence the retries. A group that stays busy is left (and logged).
        """
        deadline = time.monotonic() + wait
        self.oom_killed()  # remember the verdict: the counter goes with the group
        with self._lock:
            self._oom_file = None  # never reopened: the verdict is kept in _oom_seen
            if self._oom_fd is not None:
                os.close(self._oom_fd)
                self._oom_fd = None
        for place, path in self._dirs:
            if place.version == 2 and (path / "cgroup.kill").exists():
                _write(path / "cgroup.kill", "1")
            while True:
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EBUSY, errno.ENOTEMPTY):
                        raise
                    if time.monotonic() >= deadline:
                        _log.warning("sandbox_cgroup_busy", path=str(path))
                        return False
                    time.sleep(0.01)
            with contextlib.suppress(OSError):
                place.base.rmdir()  # the last worker tidies up; busy while others live
        return True


class Cgroups:
    """Creates worker groups where the host allows it; thread-safe, one per broker process."""

    def __init__(self, places: tuple[_Place, ...], status: CgroupStatus) -> None:
        self._places = places
        self.status = status
        self._lock = threading.Lock()

    @classmethod
    def disabled(cls, reason: str) -> Cgroups:
        """No per-worker cgroups (the operator said so); every limit is a per-process rlimit."""
        return cls((), CgroupStatus({}, dict.fromkeys(CONTROLLERS, reason)))

    @classmethod
    def detect(cls, proc_self: Path = _PROC_SELF) -> Cgroups:
        """Find where this process may create worker groups, and log what is missing once."""
        try:
            memberships = _memberships((proc_self / "cgroup").read_text(encoding="utf-8"))
            mounts = _mounts((proc_self / "mountinfo").read_text(encoding="utf-8"))
        except OSError as exc:
            found = cls.disabled(f"cannot read the process's cgroups ({exc.strerror})")
        else:
            found = cls._find(memberships, mounts)
        for place in found._places:
            _sweep(place)
        status = found.status
        if status.missing:
            _log.warning(
                "sandbox_cgroups_missing",
                missing=status.missing,
                in_use=status.controllers,
                fallback="per-process rlimits (RLIMIT_AS, RLIMIT_NPROC) for what is missing",
            )
        else:
            _log.info("sandbox_cgroups", in_use=status.controllers)
        return found

    @classmethod
    def _find(cls, memberships: dict[str, str], mounts: list[_Mount]) -> Cgroups:
        places: list[_Place] = []
        missing: dict[str, str] = {}
        wanted = list(CONTROLLERS)
        v2 = _v2_place(memberships, mounts, wanted)
        if isinstance(v2, _Place):
            places.append(v2)
            wanted = [c for c in wanted if c not in v2.controllers]
        for name in wanted:
            v1 = _v1_place(name, memberships, mounts)
            if isinstance(v1, _Place):
                places.append(v1)
            else:
                missing[name] = f"{v2}; {v1}" if isinstance(v2, str) else v1
        used = {name: f"v{p.version}" for p in places for name in p.controllers}
        return cls(tuple(places), CgroupStatus(used, missing))

    def create(self, name: str, limits: WorkerLimits) -> WorkerGroup | None:
        """Create and limit the group ``name``; ``None`` when the host gives no cgroups."""
        if not self._places:
            return None
        created: list[tuple[_Place, Path]] = []
        try:
            with self._lock:
                for place in self._places:
                    path = _make_group(place, name)
                    created.append((place, path))
                    _limit(place, path, limits)
        except OSError as exc:
            with contextlib.suppress(OSError):
                WorkerGroup(tuple(created)).remove(wait=0)
            raise CgroupError(
                exc.errno, f"cannot set up the worker's cgroup {name}: {exc.strerror}"
            ) from exc
        return WorkerGroup(tuple(created))


@functools.cache
def default_cgroups() -> Cgroups:
    """The process-wide manager, detected (and its gaps logged) on first use."""
    return Cgroups.detect()


def configured_cgroups(enabled: bool) -> Cgroups:
    """The manager for ``[sandbox] cgroups = enabled``: detected, or off (and said so)."""
    if enabled:
        return default_cgroups()
    off = Cgroups.disabled("turned off by [sandbox] cgroups = false")
    _log.warning(
        "sandbox_cgroups_missing",
        missing=off.status.missing,
        in_use={},
        fallback="per-process rlimits (RLIMIT_AS, RLIMIT_NPROC)",
    )
    return off


# --- limits -------------------------------------------------------------------------------------


def memory_limit(limits: WorkerLimits) -> int:
    """The group's memory: the package's limit plus its scratch tmpfs, whose pages it is charged."""
    return limits.memory_bytes + limits.scratch_bytes


def pids_limit(limits: WorkerLimits) -> int:
    """The group's tasks: the package's process limit plus the worker's reaper."""
    return limits.processes + 1


def _limit(place: _Place, path: Path, limits: WorkerLimits) -> None:
    memory = str(memory_limit(limits))
    if "memory" in place.controllers and place.version == 2:
        _write(path / "memory.max", memory)
        _write_if_present(path / "memory.swap.max", "0")
        _write(path / "memory.oom.group", "1")  # an OOM kill ends the whole worker
    elif "memory" in place.controllers:
        _write(path / "memory.limit_in_bytes", memory)
        _write_if_present(path / "memory.memsw.limit_in_bytes", memory)  # memory + swap
    if "pids" in place.controllers:
        _write(path / "pids.max", str(pids_limit(limits)))


# --- finding the broker's own cgroups -----------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class _Mount:
    fstype: str
    root: str
    mountpoint: Path
    options: frozenset[str]


def _memberships(text: str) -> dict[str, str]:
    """``/proc/self/cgroup`` as controller -> path; the v2 tree under the key ``""``."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        for name in controllers.split(",") if controllers else [""]:
            found[name] = path
    return found


def _mounts(text: str) -> list[_Mount]:
    """The cgroup mounts in ``/proc/self/mountinfo`` (proc(5))."""
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        mounts.append(
            _Mount(
                fstype=tail[0],
                root=_unescape(fields[3]),
                mountpoint=Path(_unescape(fields[4])),
                options=frozenset(tail[2].split(",")),
            )
        )
    return mounts


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _visible(mount: _Mount, path: str) -> Path | None:
    """Where the cgroup ``path`` is under ``mount``, if the mount shows it."""
    root = mount.root.rstrip("/")
    if path != root and not path.startswith(root + "/"):
        return None
    return mount.mountpoint / path[len(root) :].lstrip("/")


def _v2_place(memberships: dict[str, str], mounts: list[_Mount], wanted: list[str]) -> _Place | str:
    path = memberships.get("")
    own = next(
        (seen for m in mounts if m.fstype == "cgroup2" and (seen := _visible(m, path or ""))),
        None,
    )
    if path is None or own is None:
        return "no cgroup v2 tree"
    try:
        offered = (own / "cgroup.controllers").read_text(encoding="ascii").split()
    except OSError as exc:
        return f"cgroup v2 {own} unreadable ({exc.strerror})"
    usable = tuple(c for c in wanted if c in offered)
    if not usable:
        return f"cgroup v2 {own} is not delegated these controllers"
    place = _Place(2, own, usable)
    try:
        _delegate(place)
    except OSError as exc:
        return f"cgroup v2 {own} cannot be used ({exc.strerror or exc})"
    return place


def _v1_place(name: str, memberships: dict[str, str], mounts: list[_Mount]) -> _Place | str:
    path = memberships.get(name)
    own = next(
        (
            seen
            for m in mounts
            if m.fstype == "cgroup" and name in m.options and (seen := _visible(m, path or ""))
        ),
        None,
    )
    if path is None or own is None:
        return "no cgroup v1 hierarchy"
    place = _Place(1, own, (name,))
    try:
        # Try, and tidy up: an empty leftover would keep the broker's own cgroup from removal.
        fresh = not place.base.exists()
        place.base.mkdir(exist_ok=True)
        if fresh:
            with contextlib.suppress(OSError):
                place.base.rmdir()
    except OSError as exc:
        return f"cgroup v1 {own} is not writable ({exc.strerror})"
    if not fresh and not os.access(place.base, os.W_OK):  # made by another user (a root broker)
        return f"cgroup v1 {place.base} is not writable by this user"
    return place


def _delegate(place: _Place) -> None:
    """Enable the controllers for the broker's subtree (v2), keeping processes in leaves only."""
    enabled = (place.own / "cgroup.subtree_control").read_text(encoding="ascii").split()
    todo = " ".join(f"+{c}" for c in place.controllers if c not in enabled)
    if todo:
        try:
            _write(place.own / "cgroup.subtree_control", todo)
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise
            _leave_for_leaf(place.own)
            _write(place.own / "cgroup.subtree_control", todo)
    _ensure_base(place)


def _leave_for_leaf(own: Path) -> None:
    """Move the broker into ``<own>/broker`` when it is alone in ``own``; refuse otherwise."""
    members = (own / "cgroup.procs").read_text(encoding="ascii").split()
    if members != [str(os.getpid())]:
        raise OSError(
            errno.EBUSY,
            f"{own} holds other processes; give the broker a cgroup of its own (Delegate=yes)",
        )
    leaf = own / BROKER_LEAF
    leaf.mkdir(exist_ok=True)
    _write(leaf / "cgroup.procs", str(os.getpid()))


def _ensure_base(place: _Place) -> None:
    place.base.mkdir(exist_ok=True)
    if place.version == 2:
        _write(place.base / "cgroup.subtree_control", " ".join(f"+{c}" for c in place.controllers))


def _make_group(place: _Place, name: str) -> Path:
    path = place.base / name
    for _ in range(3):  # the base may vanish under us: its last worker removes it
        _ensure_base(place)
        try:
            path.mkdir()
        except FileNotFoundError:
            continue
        except FileExistsError:
            path.rmdir()  # left by a dead worker whose host pid was reused; empty, or busy
            path.mkdir()
        return path
    raise OSError(errno.ENOENT, f"{place.base} keeps disappearing")


def _sweep(place: _Place) -> None:
    """Remove empty groups left by workers whose reaper is gone (a broker that was killed).

    Only groups named after a pid that no longer exists, and only if empty (``rmdir`` refuses a
    group with processes), so another broker's live workers are never touched.
    """
    try:
        entries = list(place.base.iterdir())
    except OSError:
        return
    for entry in entries:
        pid = entry.name.removeprefix("worker-")
        if entry.name.startswith("worker-") and pid.isdigit() and not _alive(int(pid)):
            with contextlib.suppress(OSError):
                entry.rmdir()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write(path: Path, value: str) -> None:
    """One ``write(2)``: cgroup files take a value per write call."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, value.encode("ascii"))
    finally:
        os.close(fd)


def _write_if_present(path: Path, value: str) -> None:
    if path.exists():
        _write(path, value)


def _counters(text: str) -> dict[str, int]:
    counters = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            counters[key] = int(value)
    return counters
