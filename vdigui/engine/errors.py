"""The engine's error types.

Every error the engine raises on purpose derives from :class:`VdiError`, and ``str(exc)`` is one
complete sentence naming the file, the field, the value and what was expected, so the CLI can print
it as it is and the GUI can show it in a dialog. Subclasses carry fields the GUI can act on
(for example the UUID a "Locate parent..." button should look for).
"""

from __future__ import annotations

from pathlib import Path


class VdiError(Exception):
    """Root of every error the engine raises deliberately."""


class HeaderError(VdiError):
    """A VDI header (or the layout it describes) is not one the engine accepts.

    Attributes:
        path: the file.
        field: the header field at fault, by its VirtualBox name.
        value: the value found (already formatted for people).
        expected: what would have been accepted.
    """

    def __init__(
        self,
        path: Path | str,
        field: str,
        value: str,
        expected: str,
        *,
        lead: str = "is not a usable VDI image",
    ) -> None:
        self.path = Path(path)
        self.field = field
        self.value = value
        self.expected = expected
        # Plain words first, the file named once, the field detail after.
        super().__init__(
            f"{self.path} {lead}: header field {field} is {value}, expected {expected}."
        )


class NotVdiImageError(HeaderError):
    """The file is not a VDI image at all; the message says what it is, when recognised.

    Attributes (besides HeaderError's):
        what: what the file was recognised as ("a VMDK sparse disk (VMware)"), or "".
    """

    def __init__(
        self, path: Path | str, field: str, value: str, expected: str, message: str, what: str = ""
    ) -> None:
        super().__init__(path, field, value, expected)
        self.what = what
        self.args = (message,)

    def __str__(self) -> str:
        return str(self.args[0])


class ImageCorruptError(VdiError):
    """The block map or data area of an image cannot be read as it claims (e.g. past EOF)."""


class ChainError(VdiError):
    """A differencing chain cannot be assembled (loop, size mismatch, wrong type)."""


class ChainLoopError(ChainError):
    """Following the parent links comes back to an image already seen.

    Its own type because writing commands must refuse such a chain before anything else:
    no state reads through it, so nothing could be verified.
    """


class MissingParentError(ChainError):
    """The parent a differencing image links to was not found.

    Attributes:
        parent_uuid: the uuidLinkage of the child, as text.
        child_path: the image whose parent is missing.
        searched: the folders that were looked in.
    """

    def __init__(self, parent_uuid: str, child_path: Path, searched: tuple[Path, ...]) -> None:
        self.parent_uuid = parent_uuid
        self.child_path = Path(child_path)
        self.searched = searched
        where = ", ".join(str(p) for p in searched) or "nowhere"
        super().__init__(
            f"Parent image {{{parent_uuid}}} of '{self.child_path.name}' was not found "
            f"(looked in: {where})."
        )


class SettingsError(VdiError):
    """A .vbox or VirtualBox.xml file cannot be read (malformed, hostile or not VirtualBox's)."""


class OperationRefused(VdiError):
    """A writing operation will not run; the message says why and what to do instead."""


class OperationCancelled(VdiError):
    """The user cancelled an operation; the message says what state the data is in."""

    def __init__(self, message: str = "Cancelled: nothing was changed.") -> None:
        super().__init__(message)


class VerificationError(VdiError):
    """The guest content after an operation differs from before; the original is kept."""


class GuestFsError(VdiError):
    """A guest filesystem's metadata cannot be read as it claims (damaged or hostile).

    Raised by the guest file layer (:mod:`vdigui.engine.guestfs.files`) for loops, extents
    outside the filesystem, impossible sizes and the like; never for ordinary absence.
    """


class GuestPathError(VdiError):
    """A path inside a guest filesystem names nothing, or the wrong kind of thing."""
