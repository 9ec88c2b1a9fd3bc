"""The snapshot cost map: what deleting each snapshot frees, copies and needs, before asking.

Why the figures come from the deletion plan itself: the promise is "a deletion frees what the
cost map said, within one block per image" (issue 17). So every figure here is read off the
:class:`~vdigui.engine.operations.merge.MergePlan` (and its
:class:`~vdigui.engine.operations.space.SpacePlan`) that
:func:`~vdigui.engine.operations.merge.plan_snapshot_delete` returns for that snapshot, the
same call ``vdictl snapshot delete`` and the Delete Snapshot wizard make. Planning reads only
headers, block maps, file sizes and the ``.vbox`` (no guest data), so it is cheap enough to do
for every snapshot; nothing is written.

Per snapshot (:class:`SnapshotCost`):

- ``only_here``: bytes of the data blocks of the snapshot's disks that no other state reads,
  because every child disk holds its own version of those blocks (a block is one
  ``cbBlock``, usually 1 MiB). These blocks are what a deletion can reclaim at best.
- ``frees_without_undo``: ``plan.space.frees`` planned with ``keep_undo=False``: how much the
  files outside ``.vdigui`` shrink by.
- ``frees_keeping_undo``: ``plan.space.net_frees`` planned with ``keep_undo=True``: how much
  the whole folder (``.vdigui`` included) shrinks by while the undo data is kept; negative
  when the folder grows (the merged-away image moves into the undo backup, and before-images
  are added). Discarding the undo data afterwards frees the rest.
- ``copies``: data bytes the chosen merge direction copies (``DirectionCost.bytes``).
- ``needs``: ``plan.space.peak_extra``: extra host space while the deletion runs.
- ``seconds_estimate``: ``copies`` divided by a copy rate. It is an *estimate*; the rate
  comes, in this order, from the ``rate`` argument, from the last vdigui operation recorded
  in the folder (``.vdigui/last-operation.json``: bytes written over its duration, when it
  copied at least 64 MiB over at least one second), or from a small measurement of this host
  (8 MiB written, flushed and read back in the temporary folder, done once per process and
  cached). :attr:`SnapshotCost.rate_source` says which.

A snapshot VirtualBox (or vdigui) would refuse to delete gets ``refused_reason`` (the plan's
one-sentence refusal) and None for the plan figures.

The cheapest order (:func:`cheapest_order`, :func:`best_order`): deleting one snapshot
changes the others' costs (merged images grow, directions change). Each candidate order is
planned step by step on a *shadow* of the VM folder: a temporary copy holding the ``.vbox``,
every VDI's header and block map, and every other file as a sparse file of the same size, so
the real planning functions see exactly what they would see on the real folder. After each
step the plan is applied to the shadow at the map level, the way the merge would apply it
(the plan's upper bound: every candidate data block without a slot gets a new slot), and the
``.vbox`` is edited as the deletion edits it. The cost model of an order: the bytes copied
by all its deletions plus the largest host space any of them needs at its peak (both count
against the user: time and free space). Up to 6 snapshots every order is tried; beyond, a
greedy order (cheapest next step first).
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
import tempfile
import time
import uuid as uuidlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vdigui.engine import fileio
from vdigui.engine import format as fmt
from vdigui.engine.errors import OperationRefused, VdiError
from vdigui.engine.image import open_image
from vdigui.engine.operations import journal as jr
from vdigui.engine.operations import merge as mg
from vdigui.engine.operations.merge_copy import candidate_mask
from vdigui.engine.vbox_edit import VboxDocument, is_inside

#: Orders of up to this many snapshots are tried exhaustively (6! = 720 plans at most).
EXHAUSTIVE_LIMIT = 6
#: A recorded operation counts as a rate measurement when it copied at least this much ...
_RECORD_MIN_BYTES = 64 * fmt.MIB
#: ... over at least this many seconds.
_RECORD_MIN_SECONDS = 1.0
#: Bytes written and read back by the host measurement.
_PROBE_BYTES = 8 * fmt.MIB

_measured_rate: float | None = None


@dataclass(frozen=True, slots=True)
class SnapshotCost:
    """What deleting one snapshot would free, copy and need (None: refused).

    Attributes:
        name, uuid: the snapshot.
        depth: its depth in the snapshot tree (0 for the first snapshot).
        current: it is the current snapshot.
        only_here: bytes of data blocks only this snapshot's state reads.
        frees_keeping_undo: what the whole folder shrinks by when undo data is kept.
        frees_without_undo: what the files outside ``.vdigui`` shrink by without undo data.
        copies: data bytes the merge copies (as planned for ``keep_undo``).
        needs: host space needed while it runs (as planned for ``keep_undo``).
        seconds_estimate: an estimate of the time, ``copies`` / ``rate``.
        keep_undo: which of the two plans ``frees``, ``copies`` and ``needs`` describe.
        rate: the copy rate used for the estimate (bytes per second).
        rate_source: where the rate came from, in words.
        refused_reason: why the snapshot cannot be deleted (None when it can).
    """

    name: str
    uuid: str
    depth: int
    current: bool
    only_here: int | None
    frees_keeping_undo: int | None
    frees_without_undo: int | None
    copies: int | None
    needs: int | None
    seconds_estimate: float | None
    keep_undo: bool
    rate: float
    rate_source: str
    refused_reason: str | None = None

    @property
    def frees(self) -> int | None:
        """What the deletion frees in the chosen undo mode."""
        return self.frees_keeping_undo if self.keep_undo else self.frees_without_undo

    @property
    def deletable(self) -> bool:
        """False when VirtualBox's (or vdigui's) rules refuse the deletion."""
        return self.refused_reason is None

    def to_dict(self) -> dict[str, Any]:
        """JSON form (``vdictl snapshot list --cost --json``, the report); snake_case keys."""
        return {
            "name": self.name,
            "uuid": self.uuid,
            "depth": self.depth,
            "current": self.current,
            "only_here": self.only_here,
            "frees": self.frees,
            "frees_keeping_undo": self.frees_keeping_undo,
            "frees_without_undo": self.frees_without_undo,
            "copies": self.copies,
            "needs": self.needs,
            "seconds_estimate": (
                None if self.seconds_estimate is None else round(self.seconds_estimate, 1)
            ),
            "keep_undo": self.keep_undo,
            "rate": round(self.rate),
            "rate_source": self.rate_source,
            "refused_reason": self.refused_reason,
        }


@dataclass(frozen=True, slots=True)
class OrderStep:
    """One deletion of an order, as planned after the deletions before it."""

    name: str
    copies: int
    needs: int
    frees: int


@dataclass(frozen=True, slots=True)
class OrderCost:
    """The cost of deleting snapshots in one order.

    Attributes:
        order: snapshot names, first deleted first.
        steps: each deletion's planned figures.
        exhaustive: every order was tried (False: the greedy order for a large set).
        tried: how many orders (or greedy steps) were planned.
    """

    order: tuple[str, ...]
    steps: tuple[OrderStep, ...]
    exhaustive: bool = True
    tried: int = 1

    @property
    def copies(self) -> int:
        """Bytes copied by all the deletions."""
        return sum(s.copies for s in self.steps)

    @property
    def peak(self) -> int:
        """The most host space any one deletion needs while it runs."""
        return max((s.needs for s in self.steps), default=0)

    @property
    def frees(self) -> int:
        """What all the deletions free together."""
        return sum(s.frees for s in self.steps)

    @property
    def cost(self) -> int:
        """The cost model: bytes copied plus peak host space."""
        return self.copies + self.peak

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "order": list(self.order),
            "cost": self.cost,
            "copies": self.copies,
            "peak": self.peak,
            "frees": self.frees,
            "exhaustive": self.exhaustive,
            "tried": self.tried,
            "steps": [
                {"name": s.name, "copies": s.copies, "needs": s.needs, "frees": s.frees}
                for s in self.steps
            ],
        }


# -- the cost map ----------------------------------------------------------------------------


def snapshot_costs(
    vm: Path | str, *, keep_undo: bool = True, rate: float | None = None
) -> list[SnapshotCost]:
    """The cost of deleting each snapshot of the VM in ``vm`` (tree order, depth-first).

    Args:
        vm: a VM folder or its ``.vbox``.
        keep_undo: which plan ``frees``/``copies``/``needs`` describe (both frees are given).
        rate: copy rate in bytes per second for the time estimate (None: recorded or measured,
            see the module docstring).

    Raises:
        SettingsError: the ``.vbox`` cannot be read.
    """
    vbox, rows = mg.list_snapshots(vm)
    if rate is not None and rate > 0:
        used_rate, source = float(rate), "given"
    else:
        used_rate, source = copy_rate(vbox.parent)
    doc = VboxDocument.load(vbox)
    registry = doc.hard_disks()
    out: list[SnapshotCost] = []
    for row in rows:
        snap = doc.find_snapshot(row.uuid)
        only = _only_here(doc, snap, registry) if snap is not None else None
        try:
            kept = mg.plan_snapshot_delete(vbox, row.uuid, keep_undo=True)
            bare = mg.plan_snapshot_delete(vbox, row.uuid, keep_undo=False)
        except (VdiError, OSError) as exc:
            reason = (
                str(exc)
                if isinstance(exc, VdiError)
                else (
                    f"'{exc.filename}' cannot be read ({exc.strerror}), so this deletion cannot "
                    "be planned."
                )
            )
            out.append(
                SnapshotCost(
                    row.name,
                    row.uuid,
                    row.depth,
                    row.current,
                    only,
                    None,
                    None,
                    None,
                    None,
                    None,
                    keep_undo,
                    used_rate,
                    source,
                    refused_reason=reason,
                )
            )
            continue
        chosen = kept if keep_undo else bare
        copies = plan_copies(chosen)
        out.append(
            SnapshotCost(
                row.name,
                row.uuid,
                row.depth,
                row.current,
                only,
                frees_keeping_undo=kept.space.net_frees,
                frees_without_undo=bare.space.frees,
                copies=copies,
                needs=chosen.space.peak_extra,
                seconds_estimate=copies / used_rate,
                keep_undo=keep_undo,
                rate=used_rate,
                rate_source=source,
            )
        )
    return out


def plan_copies(plan: mg.MergePlan) -> int:
    """Data bytes a plan's merges copy (the chosen direction's cost, listed first)."""
    merges = [s for s in plan.steps if s.action is mg.StepAction.MERGE and s.costs]
    return sum(step.costs[0].bytes for step in merges)


def _only_here(doc: VboxDocument, snap: Any, registry: dict[uuidlib.UUID, Any]) -> int | None:
    """Bytes of the snapshot's data blocks that every child disk overrides.

    A block of the snapshot's disk H is read by another state exactly when some child disk
    of H leaves it FREE (that child's state, and everything built on it, reads through to H).
    A disk other states attach as well (writethrough, shareable) holds nothing of its own.
    """
    total = 0
    try:
        for image_el in doc.hard_disk_images(snap):
            uid = fmt.parse_uuid(image_el.get("uuid"))
            el = registry.get(uid) if uid is not None else None
            path = doc.disk_path(el) if el is not None else None
            if uid is None or el is None or path is None:
                continue
            if any(doc.owner_of(r) is not snap for r in doc.image_refs(uid)):
                continue
            kids = [p for p in (doc.disk_path(c) for c in doc.disk_children(el)) if p]
            with open_image(path) as image:
                own = fmt.is_allocated(image.block_map)
                covered = np.ones(own.size, dtype=bool)
                for kid in kids:
                    with open_image(kid) as child:
                        n = min(own.size, child.block_map.size)
                        covered[:n] &= child.block_map[:n] != fmt.BLOCK_FREE
                        covered[n:] = False
                total += int((own & covered).sum()) * image.header.block_size
    except (VdiError, OSError):
        return None
    return total


# -- the copy rate ---------------------------------------------------------------------------


def copy_rate(folder: Path | str) -> tuple[float, str]:
    """A copy rate (bytes per second) for time estimates, and where it came from, in words."""
    recorded = recorded_rate(Path(folder))
    if recorded is not None:
        return recorded, "the last vdigui operation in this folder"
    return measured_rate(), "measured on this host"


def recorded_rate(folder: Path) -> float | None:
    """Bytes per second of the last recorded operation that copied enough to time it."""
    record = jr.last_operation(folder)
    if not record:
        return None
    written = record.get("bytes_written")
    try:
        started = dt.datetime.fromisoformat(str(record["started"]))
        finished = dt.datetime.fromisoformat(str(record["finished"]))
    except (KeyError, ValueError):
        return None
    seconds = (finished - started).total_seconds()
    if not isinstance(written, int) or written < _RECORD_MIN_BYTES or seconds < _RECORD_MIN_SECONDS:
        return None
    return written / seconds


def measured_rate() -> float:
    """This host's copy rate: 8 MiB written, flushed and read back once per process."""
    global _measured_rate
    if _measured_rate is not None:
        return _measured_rate
    path = Path(tempfile.gettempdir()) / f".vdigui-rate-{os.getpid()}-{uuidlib.uuid4().hex}"
    payload = np.random.default_rng(0).integers(0, 256, _PROBE_BYTES, dtype=np.uint8).tobytes()
    started = time.perf_counter()
    try:
        fd = fileio.open_fd(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            fileio.pwrite(fd, payload, 0)
            fileio.fdatasync(fd)
            done = 0
            while done < _PROBE_BYTES:
                chunk = os.pread(fd, min(fmt.MIB, _PROBE_BYTES - done), done)
                if not chunk:
                    break
                done += len(chunk)
        finally:
            fileio.close(fd)
        elapsed = time.perf_counter() - started
        rate = _PROBE_BYTES / elapsed if elapsed > 0 else float(mg.ESTIMATED_RATE)
    except OSError:
        rate = float(mg.ESTIMATED_RATE)
    finally:
        fileio.unlink(path, missing_ok=True)
    _measured_rate = rate
    return rate


# -- the cheapest order ----------------------------------------------------------------------


def cheapest_order(vm: Path | str, names: Sequence[str], *, keep_undo: bool = True) -> list[str]:
    """The order to delete ``names`` (names or UUIDs) in that costs least (see best_order)."""
    return list(best_order(vm, names, keep_undo=keep_undo).order)


def best_order(vm: Path | str, names: Sequence[str], *, keep_undo: bool = True) -> OrderCost:
    """The cheapest order to delete ``names``, with its cost (bytes copied + peak space).

    Every order of up to :data:`EXHAUSTIVE_LIMIT` snapshots is planned; beyond, each step
    deletes the snapshot whose deletion is cheapest at that point. An order some step of
    which is refused (a snapshot with two children, say, before one of them is deleted) is
    skipped; when every order is refused, the first refusal is raised.

    Raises:
        OperationRefused: no order can delete the set, or a name is not a snapshot.
    """
    keys = list(dict.fromkeys(names))
    if not keys:
        return OrderCost((), ())
    with _Shadow(vm) as shadow:
        label: dict[str, str] = {}
        for key in keys:  # a name and the same snapshot's UUID count once
            label.setdefault(shadow.snapshot_uuid(key), key)
        uuids = list(label)
        if len(uuids) <= EXHAUSTIVE_LIMIT:
            best: OrderCost | None = None
            first_error: OperationRefused | None = None
            tried = 0
            for perm in itertools.permutations(uuids):
                tried += 1
                try:
                    steps = shadow.simulate(perm, label, keep_undo)
                except OperationRefused as exc:
                    first_error = first_error or exc
                    continue
                candidate = OrderCost(tuple(label[u] for u in perm), steps)
                if best is None or candidate.cost < best.cost:
                    best = candidate
            if best is None:
                assert first_error is not None
                raise first_error
            return OrderCost(best.order, best.steps, exhaustive=True, tried=tried)
        return _greedy(shadow, uuids, label, keep_undo)


def order_cost(vm: Path | str, order: Sequence[str], *, keep_undo: bool = True) -> OrderCost:
    """The planned cost of deleting the snapshots ``order`` in exactly that order."""
    with _Shadow(vm) as shadow:
        uuids = [shadow.snapshot_uuid(k) for k in order]
        label = dict(zip(uuids, order, strict=True))
        return OrderCost(tuple(order), shadow.simulate(uuids, label, keep_undo))


def _greedy(shadow: _Shadow, uuids: list[str], label: dict[str, str], keep_undo: bool) -> OrderCost:
    left = list(uuids)
    steps: list[OrderStep] = []
    tried = 0
    while left:
        best: tuple[int, str, mg.MergePlan] | None = None
        error: OperationRefused | None = None
        for u in left:
            tried += 1
            try:
                plan = mg.plan_snapshot_delete(shadow.vbox, u, keep_undo=keep_undo)
            except OperationRefused as exc:
                error = error or exc
                continue
            cost = plan_copies(plan) + plan.space.peak_extra
            if best is None or cost < best[0]:
                best = (cost, u, plan)
        if best is None:
            assert error is not None
            raise error
        _cost, u, plan = best
        steps.append(_step(label[u], plan))
        shadow.apply(plan)
        left.remove(u)
    return OrderCost(tuple(s.name for s in steps), tuple(steps), exhaustive=False, tried=tried)


def _step(name: str, plan: mg.MergePlan) -> OrderStep:
    frees = plan.space.net_frees if plan.keep_undo else plan.space.frees
    return OrderStep(name, plan_copies(plan), plan.space.peak_extra, frees)


@dataclass
class _Shadow:
    """A sparse stand-in of a VM folder that the planning functions cannot tell apart.

    Holds the ``.vbox``, every VDI's first ``offData`` bytes (pre-header, header, block map)
    at the VDI's real size (the data area is a hole), and every other file (saved states,
    NVRAM, logs) as a hole of its real size. ``.vdigui`` is left out. Nothing of the real
    folder is ever written: every disk the shadow's ``.vbox`` names must lie inside it.
    """

    vm: Path | str
    root: Path = field(init=False)
    scratch: Path = field(init=False)
    vbox: Path = field(init=False)
    _pristine: dict[Path, bytes] = field(init=False, default_factory=dict)
    _sizes: dict[Path, int] = field(init=False, default_factory=dict)

    def __enter__(self) -> _Shadow:
        real_vbox = mg.find_vbox(self.vm)
        folder = real_vbox.parent.resolve()
        self.scratch = Path(tempfile.gettempdir()) / f"vdigui-order-{uuidlib.uuid4().hex}"
        fileio.makedirs(self.scratch)
        self.root = self.scratch / folder.name
        try:
            for dirpath, dirs, files in os.walk(folder):
                dirs[:] = [d for d in dirs if d != jr.STATE_DIR]
                here = Path(dirpath)
                fileio.makedirs(self.root / here.relative_to(folder))
                for name in files:
                    src = here / name
                    if src.is_symlink() or not src.is_file():
                        continue
                    self._mirror(src, self.root / src.relative_to(folder))
            self.vbox = self.root / real_vbox.name
            self._check_contained()
        except BaseException:
            fileio.remove_tree(self.scratch)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        fileio.remove_tree(self.scratch)

    def _mirror(self, src: Path, dst: Path) -> None:
        size = src.stat().st_size
        if src.suffix.lower() in (".vbox", ".vbox-prev"):
            data = src.read_bytes()
        elif src.suffix.lower() == ".vdi":
            try:
                header = fmt.read_header(src)
            except VdiError:
                data = b""
            else:
                with src.open("rb") as f:
                    data = f.read(min(size, header.offset_data))
        else:
            data = b""
        fd = fileio.open_fd(dst, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            if data:
                fileio.pwrite(fd, data, 0)
            fileio.ftruncate(fd, size)
        finally:
            fileio.close(fd)
        self._pristine[dst] = data
        self._sizes[dst] = size

    def _check_contained(self) -> None:
        doc = VboxDocument.load(self.vbox)
        for el in doc.hard_disks().values():
            path = doc.disk_path(el)
            if path is None or not is_inside(path, self.root):
                raise OperationRefused(
                    f"The disk '{el.get('location')}' lies outside the VM folder, so the "
                    "cheapest order cannot be worked out; delete the snapshots one at a time."
                )

    def reset(self) -> None:
        """Back to the real folder's state (for the next order)."""
        for path in list(self._pristine):
            fd = fileio.open_fd(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                if self._pristine[path]:
                    fileio.pwrite(fd, self._pristine[path], 0)
                fileio.ftruncate(fd, self._sizes[path])
            finally:
                fileio.close(fd)
        keep = set(self._pristine)
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                path = Path(dirpath) / name
                if path not in keep:
                    fileio.unlink(path, missing_ok=True)

    def snapshot_uuid(self, key: str) -> str:
        """The UUID of snapshot ``key`` (a name or UUID)."""
        doc = VboxDocument.load(self.vbox)
        snap = doc.find_snapshot(key)
        if snap is None:
            names = ", ".join(f"'{s.get('name')}'" for s in doc.snapshots()) or "none"
            raise OperationRefused(
                f"The VM has no snapshot named or numbered '{key}' (snapshots: {names})."
            )
        return str(doc.snapshot_uuid(snap))

    def simulate(
        self, uuids: Iterable[str], label: dict[str, str], keep_undo: bool
    ) -> tuple[OrderStep, ...]:
        """Plan and apply each deletion in turn; the shadow is reset first."""
        self.reset()
        steps = []
        for u in uuids:
            plan = mg.plan_snapshot_delete(self.vbox, u, keep_undo=keep_undo)
            steps.append(_step(label[u], plan))
            self.apply(plan)
        return tuple(steps)

    def apply(self, plan: mg.MergePlan) -> None:
        """What the deletion does to headers, maps, sizes, links, removals and the ``.vbox``.

        Data slots: in-place writes keep their slot; every candidate data block without a
        slot gets a new one at ``cBlocksAllocated`` (the plan's upper bound); a ZERO entry
        over no slot becomes a ZERO entry.
        """
        for step in plan.steps:
            if step.action is not mg.StepAction.MERGE:
                continue
            assert step.source is not None and step.target is not None
            backward = step.direction is mg.MergeDirection.BACKWARD
            with (
                open_image(step.source.path) as source,
                open_image(step.target.path, writable=True) as target,
            ):
                n = min(source.guest_blocks, target.guest_blocks)
                s_map = source.block_map[:n]
                t_map = target.block_map[:n].copy()
                cand = candidate_mask(s_map, t_map, backward)
                no_slot = ~fmt.is_allocated(t_map)
                new = np.flatnonzero(cand & no_slot & fmt.is_allocated(s_map))
                zero = np.flatnonzero(cand & no_slot & (s_map == fmt.BLOCK_ZERO))
                h = target.header
                slots = np.arange(h.blocks_allocated, h.blocks_allocated + new.size)
                target.write_entries(
                    np.concatenate([new, zero]),
                    np.concatenate([slots, np.full(zero.size, fmt.BLOCK_ZERO)]),
                )
                target.write_header(h.replace(blocks_allocated=h.blocks_allocated + new.size))
                end = target.header.expected_file_size(target.header.blocks_allocated)
                if end > target.file_size:
                    target.truncate(end)
            for ref in step.relink:
                with open_image(ref.path, writable=True) as image:
                    h = image.header
                    if step.new_parent is None:
                        image.write_header(
                            h.replace(
                                parent_uuid=fmt.NULL_UUID,
                                parent_modify_uuid=fmt.NULL_UUID,
                                image_type=fmt.ImageType.DYNAMIC,
                            )
                        )
                    else:
                        image.write_header(h.replace(parent_uuid=step.new_parent))
        for path, _outside in plan.files_removed:
            fileio.unlink(path, missing_ok=True)
        if plan.vbox is not None:
            doc = VboxDocument.load(plan.vbox)
            old = doc.original_bytes
            mg._edit_vbox(doc, plan)
            _write(plan.vbox, doc.to_bytes())
            _write(plan.vbox.with_name(plan.vbox.name + "-prev"), old)


def _write(path: Path, data: bytes) -> None:
    fd = fileio.open_fd(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        fileio.pwrite(fd, data, 0)
    finally:
        fileio.close(fd)
