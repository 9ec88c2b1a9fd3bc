"""What an operation does to disk space, stated in its plan before anything is written.

Every writing operation's plan carries one :class:`SpacePlan`, so the CLI's ``--dry-run`` and
the wizards' preview give the same four answers: how much the operation frees, how much it
keeps for undo and where, how much more host space it needs while it runs, and how large each
file will be at the end. Tests then measure the real files against these figures.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from vdigui.engine.units import human_size


@dataclass(frozen=True, slots=True)
class FileOutcome:
    """One file the operation creates, changes or removes.

    Attributes:
        path: the file.
        size_before: its size now (0 when the operation creates it).
        size_after: its size when the operation has finished (0 when it is removed).
    """

    path: Path
    size_before: int
    size_after: int

    @property
    def change(self) -> int:
        """Bytes the file grows by (negative: shrinks)."""
        return self.size_after - self.size_before


@dataclass(frozen=True, slots=True)
class SpacePlan:
    """The space figures of one planned operation.

    Attributes:
        files: every file the operation creates, changes or removes, with its end size.
        undo_bytes: bytes kept for undo once the operation is done (0 without undo data).
        undo_dir: where the undo data is kept (None without undo data).
        peak_extra: host space needed while the operation runs, beyond what the files take
            now (temporary files, before-images, blocks appended before old ones are freed).
        keep_undo: whether undo data is kept; False means the operation cannot be undone.
        undoable: whether the operation supports undo at all (clone and export create new
            files: deleting them is their undo).
    """

    files: tuple[FileOutcome, ...]
    undo_bytes: int
    undo_dir: Path | None
    peak_extra: int
    keep_undo: bool
    undoable: bool = True

    @classmethod
    def without_undo(
        cls, path: Path, size_before: int, size_after: int, peak_extra: int
    ) -> SpacePlan:
        """One file written (created, rewritten or replaced) with no undo data: a clone is
        undone by deleting it; compaction and conversion keep no copy of the old file."""
        return cls(
            (FileOutcome(path, size_before, size_after),),
            0,
            None,
            peak_extra,
            keep_undo=False,
            undoable=False,
        )

    @property
    def frees(self) -> int:
        """Bytes the files shrink by in total, not counting undo data (negative: grows)."""
        return -sum(f.change for f in self.files)

    @property
    def net_frees(self) -> int:
        """What the folder shrinks by once done, undo data included."""
        return self.frees - self.undo_bytes

    def total_lines(
        self, discard_how: str = "'vdictl undo --discard'", *, say_not_undoable: bool = True
    ) -> list[str]:
        """The totals in plain words: frees, undo data kept, host space needed while running.

        ``discard_how`` names the command that discards undo data (the app names its menu
        item); ``say_not_undoable`` False leaves out "cannot be undone" for a caller that says
        it in its own words.
        """
        out: list[str] = []
        if self.frees > 0:
            out.append(f"Frees {human_size(self.frees)} ({self.frees:,} bytes) of disk files.")
        elif self.frees == 0:
            out.append("Frees no space: the disk files keep their size.")
        else:
            out.append(f"Uses {human_size(-self.frees)} more ({-self.frees:,} bytes).")
        if self.undoable and self.keep_undo and self.undo_bytes:
            where = f" in {self.undo_dir}" if self.undo_dir is not None else ""
            net = self.net_frees
            until = (
                f"the folder is {human_size(-net)} larger than now"
                if net < 0
                else f"the folder shrinks by {human_size(net)} only"
            )
            out.append(
                f"Keeps {human_size(self.undo_bytes)} of undo data{where}: until "
                f"{discard_how} discards it, {until}."
            )
        elif self.undoable and not self.keep_undo and say_not_undoable:
            out.append("Keeps no undo data: this operation cannot be undone.")
        out.append(f"Needs {human_size(self.peak_extra)} of free host space while it runs.")
        return out

    def file_lines(self) -> list[str]:
        """The end size of every file, one line each."""
        out: list[str] = []
        for f in self.files:
            if f.size_after == 0 and f.size_before > 0:
                out.append(f"{f.path.name}: {human_size(f.size_before)} -> removed")
            elif f.size_before == 0:
                out.append(f"{f.path.name}: new, {human_size(f.size_after)}")
            else:
                out.append(
                    f"{f.path.name}: {human_size(f.size_before)} -> {human_size(f.size_after)}"
                )
        return out

    def lines(self) -> list[str]:
        """Totals, then the files indented (the CLI's plans)."""
        return self.total_lines() + [f"  {line}" for line in self.file_lines()]

    def to_dict(self) -> dict[str, object]:
        """JSON form (``--dry-run --json``)."""
        return {
            "frees": self.frees,
            "net_frees": self.net_frees,
            "undo_bytes": self.undo_bytes,
            "undo_dir": str(self.undo_dir) if self.undo_dir else None,
            "peak_extra": self.peak_extra,
            "keep_undo": self.keep_undo,
            "undoable": self.undoable,
            "files": [
                {"path": str(f.path), "size_before": f.size_before, "size_after": f.size_after}
                for f in self.files
            ],
        }


# -- host space now -------------------------------------------------------------------------
def free_space(folder: Path) -> int:
    """Bytes an unprivileged user may still write in ``folder``'s filesystem."""
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return 0


def space_refusal(folder: Path, needed: int, free: int, what: str) -> str | None:
    """The refusal sentence when ``needed`` bytes do not fit in ``free``, else None."""
    if needed <= free:
        return None
    return (
        f"Not enough free space in '{folder}' for {what}: {_mib(needed)} needed, {_mib(free)} free."
    )


def _mib(value: int) -> str:
    return f"{value / (1 << 20):.1f} MiB"
