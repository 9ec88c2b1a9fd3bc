"""Edit a machine ``.vbox`` file without losing what vdigui does not understand.

The file is parsed with defusedxml (a ``.vbox`` is input like any other), comments inside the
root are kept, and the text before the root element (the XML declaration and VirtualBox's
"DO NOT EDIT" comment) is carried over byte for byte. ElementTree keeps attribute order and
unknown elements, and the root's namespace (``http://www.virtualbox.org/`` or the old innotek
one) is written back as the default namespace, so VirtualBox reads the result like its own.

Saving follows VirtualBox's safe write (Runtime ``XmlFileWriter::write``): the new text goes to
``<file>-tmp`` and is flushed, the previous file is kept as ``<file>-prev``, the temp file is
renamed over ``<file>`` and the directory is flushed. One deliberate difference: the previous
file is *hard-linked* (or copied) to ``-prev`` instead of renamed, so there is never a moment
in which ``<file>`` does not exist.

Only the edits snapshot deletion and repair need are offered; each keeps VirtualBox's layout
rules (reference section 6): child snapshots wrapped in ``<Snapshots>``, ``type`` only on base
``<HardDisk>`` elements, ``currentStateModified`` written only when false.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
import uuid as uuidlib
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import defusedxml.ElementTree as DET

from vdigui.engine import fileio
from vdigui.engine.errors import SettingsError
from vdigui.engine.format import parse_uuid

_ROOT_START = re.compile(rb"<(?![?!])")


def format_uuid(value: uuidlib.UUID) -> str:
    """The curly-braced form VirtualBox writes in settings files."""
    return "{" + str(value) + "}"


def sha256_file(path: Path) -> str | None:
    """Hex digest of a small file's bytes, or None when it does not exist."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


class VboxDocument:
    """A parsed ``.vbox`` that can be edited and saved.

    Attributes:
        path: the settings file.
        root: the ``<VirtualBox>`` element.
        machine: the ``<Machine>`` element.
    """

    def __init__(self, path: Path, raw: bytes) -> None:
        self.path = path
        self._raw = raw
        match = _ROOT_START.search(raw)
        if match is None:
            raise SettingsError(f"'{path}' holds no XML element; it is not a .vbox file.")
        self._prolog = raw[: match.start()]
        tail_match = re.search(rb">\s*$", raw)
        self._trailer = raw[tail_match.start() + 1 :] if tail_match else b"\n"
        try:
            parser = DET.DefusedXMLParser(target=ET.TreeBuilder(insert_comments=True))
            parser.feed(raw)
            root: ET.Element = parser.close()
        except (ET.ParseError, ValueError) as exc:
            raise SettingsError(f"'{path}' is not well-formed XML: {exc}.") from exc
        except Exception as exc:  # defusedxml's DTD/entity refusals
            raise SettingsError(f"'{path}' was refused as hostile XML: {exc}.") from exc
        self.root = root
        self.ns = root.tag[1:].split("}", 1)[0] if root.tag.startswith("{") else ""
        if self._local(root.tag) != "VirtualBox":
            raise SettingsError(
                f"'{path}' has root element <{self._local(root.tag)}>, expected <VirtualBox>."
            )
        machine = root.find(self.q("Machine"))
        if machine is None:
            raise SettingsError(f"'{path}' has no <Machine> element; it is not a VM's settings.")
        self.machine = machine
        self._parents: dict[ET.Element, ET.Element] = {}
        self.reindex()

    # -- loading and saving -----------------------------------------------------------------
    @classmethod
    def load(cls, path: Path | str) -> VboxDocument:
        """Read and parse a ``.vbox`` file."""
        path = Path(path)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise SettingsError(f"Cannot read '{path}': {exc.strerror or exc}.") from exc
        return cls(path, raw)

    @property
    def original_bytes(self) -> bytes:
        """The bytes the document was parsed from."""
        return self._raw

    @property
    def folder(self) -> Path:
        """The machine folder (relative locations resolve against it)."""
        return self.path.parent

    def to_bytes(self) -> bytes:
        """The document as it would be saved."""
        out: list[str] = []
        _serialize(self.root, out, self.ns, root=True)
        return self._prolog + "".join(out).encode("utf-8") + (self._trailer or b"\n")

    def save(self, target: Path | None = None) -> str:
        """Save the VirtualBox way; returns the sha256 of the bytes written."""
        data = self.to_bytes()
        write_settings_file(target or self.path, data)
        return hashlib.sha256(data).hexdigest()

    # -- helpers ----------------------------------------------------------------------------
    def q(self, name: str) -> str:
        """Qualified tag name in the document's namespace."""
        return f"{{{self.ns}}}{name}" if self.ns else name

    @staticmethod
    def _local(tag: object) -> str:
        return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""

    def _depth(self, element: ET.Element) -> int:
        depth = 0
        node = self.parent_of(element)
        while node is not None:
            depth += 1
            node = self.parent_of(node)
        return depth

    def _detach(self, holder: ET.Element, child: ET.Element) -> None:
        """Remove ``child`` and keep the surrounding whitespace tidy."""
        kids = list(holder)
        index = kids.index(child)
        if index == len(kids) - 1:
            if index > 0:
                kids[index - 1].tail = child.tail
            elif holder.text is not None and not holder.text.strip():
                holder.text = None
        holder.remove(child)

    def _attach(self, holder: ET.Element, child: ET.Element) -> None:
        """Append ``child`` to ``holder`` with VirtualBox's two-space indentation."""
        self.reindex()
        depth = self._depth(holder)
        inner, outer = "\n" + "  " * (depth + 1), "\n" + "  " * depth
        if len(holder):
            holder[-1].tail = inner
        else:
            holder.text = inner
        child.tail = outer
        holder.append(child)
        self.reindex()
        self._reindent(child)

    def _reindent(self, element: ET.Element) -> None:
        """Re-indent a moved subtree to its new depth (whitespace-only text only)."""
        depth = self._depth(element)

        def walk(node: ET.Element, level: int) -> None:
            kids = list(node)
            if not kids:
                return
            if node.text is None or not node.text.strip():
                node.text = "\n" + "  " * (level + 1)
            for i, kid in enumerate(kids):
                if kid.tail is None or not kid.tail.strip():
                    kid.tail = "\n" + "  " * (level + 1 if i < len(kids) - 1 else level)
                walk(kid, level + 1)

        walk(element, depth)

    def reindex(self) -> None:
        """Rebuild the child->parent map after structural edits."""
        self._parents = {child: parent for parent in self.root.iter() for child in parent}

    def parent_of(self, element: ET.Element) -> ET.Element | None:
        """The XML parent of ``element``."""
        return self._parents.get(element)

    def resolve_location(self, location: str) -> Path:
        """A registry location as a path (relative ones against the machine folder)."""
        loc = location.replace("\\", "/")
        path = Path(loc)
        if not path.is_absolute() and not re.match(r"^[A-Za-z]:/", loc):
            path = self.folder / path
        return path

    @property
    def snapshot_folder(self) -> Path:
        """Machine/@snapshotFolder resolved (default "Snapshots")."""
        return self.resolve_location(self.machine.get("snapshotFolder") or "Snapshots")

    # -- snapshots --------------------------------------------------------------------------
    def snapshots(self) -> list[ET.Element]:
        """Every <Snapshot> element, depth-first from the first snapshot."""
        return list(self.machine.iter(self.q("Snapshot")))

    def snapshot_uuid(self, snap: ET.Element) -> uuidlib.UUID | None:
        """A snapshot's UUID."""
        return parse_uuid(snap.get("uuid"))

    def find_snapshot(self, key: str) -> ET.Element | None:
        """A snapshot by UUID (braces optional) or by exact name; None if absent.

        Raises:
            SettingsError: the name is used by several snapshots (ask for the UUID).
        """
        wanted = parse_uuid(key)
        if wanted is not None:
            for snap in self.snapshots():
                if self.snapshot_uuid(snap) == wanted:
                    return snap
        named = [s for s in self.snapshots() if s.get("name") == key]
        if len(named) > 1:
            raise SettingsError(
                f"{len(named)} snapshots are named '{key}'; give the UUID of "
                "the one to delete instead."
            )
        return named[0] if named else None

    def snapshot_children(self, snap: ET.Element) -> list[ET.Element]:
        """The direct child snapshots (inside the <Snapshots> wrapper)."""
        wrapper = snap.find(self.q("Snapshots"))
        return [] if wrapper is None else list(wrapper.findall(self.q("Snapshot")))

    def snapshot_parent(self, snap: ET.Element) -> ET.Element | None:
        """The parent snapshot, or None for the first snapshot."""
        parent = self.parent_of(snap)
        if parent is not None and self._local(parent.tag) == "Snapshots":
            return self.parent_of(parent)
        return None

    @property
    def current_snapshot_uuid(self) -> uuidlib.UUID | None:
        """Machine/@currentSnapshot."""
        return parse_uuid(self.machine.get("currentSnapshot"))

    def own_elements(self, owner: ET.Element) -> Iterator[ET.Element]:
        """Elements that belong to ``owner`` (a Snapshot or the Machine), not to its children.

        Skips nested snapshots, and for the Machine also the snapshot tree and the registry.
        """
        skip = {"Snapshots", "Snapshot", "MediaRegistry"}
        for child in owner:
            if self._local(child.tag) in skip:
                continue
            yield from child.iter()

    def hard_disk_images(self, owner: ET.Element) -> list[ET.Element]:
        """<Image> elements of the hard-disk attachments of ``owner`` (Snapshot or Machine)."""
        images = []
        for el in self.own_elements(owner):
            if self._local(el.tag) == "AttachedDevice" and el.get("type") == "HardDisk":
                image = el.find(self.q("Image"))
                if image is not None:
                    images.append(image)
        return images

    def disk_devices(self, owner: ET.Element) -> dict[tuple[str, int, int], ET.Element]:
        """(controller name, port, device) -> the hard-disk <AttachedDevice> of ``owner``.

        Only attachments with an image count: those are the ones whose settings (discard,
        solid-state) matter to a disk.
        """
        found: dict[tuple[str, int, int], ET.Element] = {}
        for el in self.own_elements(owner):
            if self._local(el.tag) != "StorageController":
                continue
            for dev in el:
                if (
                    self._local(dev.tag) != "AttachedDevice"
                    or dev.get("type") != "HardDisk"
                    or dev.find(self.q("Image")) is None
                ):
                    continue
                key = (el.get("name") or "", _int(dev.get("port")), _int(dev.get("device")))
                found[key] = dev
        return found

    def image_refs(self, medium: uuidlib.UUID) -> list[ET.Element]:
        """Every <Image uuid> in the document that names ``medium``."""
        return [
            e for e in self.machine.iter(self.q("Image")) if parse_uuid(e.get("uuid")) == medium
        ]

    def owner_of(self, element: ET.Element) -> ET.Element:
        """The Snapshot or Machine whose settings contain ``element``."""
        node: ET.Element | None = element
        while node is not None:
            if self._local(node.tag) in ("Snapshot", "Machine"):
                return node
            node = self.parent_of(node)
        return self.machine

    def remove_snapshot(self, snap: ET.Element) -> None:
        """Remove a snapshot node, re-parenting its single child as VirtualBox does.

        The child is appended to the grand-parent's child list (VirtualBox changes the order
        the same way); a removed first snapshot is replaced in place by its child.
        """
        children = self.snapshot_children(snap)
        if len(children) > 1:
            raise SettingsError("a snapshot with more than one child cannot be removed")
        child = children[0] if children else None
        holder = self.parent_of(snap)
        if holder is None:
            raise SettingsError("the snapshot is not inside the machine")
        if child is not None:
            wrapper = snap.find(self.q("Snapshots"))
            assert wrapper is not None
            self._detach(wrapper, child)
        if self._local(holder.tag) == "Machine":
            index = list(holder).index(snap)
            if child is not None:
                child.tail = snap.tail
                holder.insert(index + 1, child)
            self._detach(holder, snap)
        else:
            self._detach(holder, snap)
            if child is not None:
                self._attach(holder, child)
            if len(holder) == 0:
                grand = self.parent_of(holder)
                if grand is not None:
                    self._detach(grand, holder)
        self.reindex()
        if child is not None:
            self._reindent(child)

    def set_current_snapshot(self, value: uuidlib.UUID | None, *, modified: bool = True) -> None:
        """Set Machine/@currentSnapshot (removed when None) and the modified flag."""
        if value is None:
            self.machine.attrib.pop("currentSnapshot", None)
        else:
            self.machine.set("currentSnapshot", format_uuid(value))
        if modified:
            self.machine.attrib.pop("currentStateModified", None)  # absent means true
        else:
            self.machine.set("currentStateModified", "false")

    # -- media registry ---------------------------------------------------------------------
    def registry(self) -> ET.Element | None:
        """Machine/MediaRegistry/HardDisks, if present."""
        reg = self.machine.find(self.q("MediaRegistry"))
        return None if reg is None else reg.find(self.q("HardDisks"))

    def hard_disks(self) -> dict[uuidlib.UUID, ET.Element]:
        """Registry <HardDisk> elements by UUID (the first one wins for duplicates)."""
        reg = self.registry()
        out: dict[uuidlib.UUID, ET.Element] = {}
        if reg is None:
            return out
        for el in reg.iter(self.q("HardDisk")):
            uid = parse_uuid(el.get("uuid"))
            if uid is not None and uid not in out:
                out[uid] = el
        return out

    def disk_parent(self, disk: ET.Element) -> ET.Element | None:
        """The registry parent <HardDisk> of ``disk`` (None for a base)."""
        parent = self.parent_of(disk)
        if parent is not None and self._local(parent.tag) == "HardDisk":
            return parent
        return None

    def disk_children(self, disk: ET.Element) -> list[ET.Element]:
        """Nested child <HardDisk> elements."""
        return list(disk.findall(self.q("HardDisk")))

    def disk_base(self, disk: ET.Element) -> ET.Element:
        """The base <HardDisk> of ``disk``'s registry tree."""
        node = disk
        while (parent := self.disk_parent(node)) is not None:
            node = parent
        return node

    def disk_path(self, disk: ET.Element) -> Path | None:
        """Where the registry says a medium's file is."""
        location = disk.get("location")
        return self.resolve_location(location) if location else None

    def move_disk(
        self, disk: ET.Element, new_parent: ET.Element | None, base_type: str | None = None
    ) -> None:
        """Re-nest ``disk`` under ``new_parent`` (None: top level, as a base of ``base_type``)."""
        holder = self.parent_of(disk)
        if holder is not None:
            self._detach(holder, disk)
        if new_parent is None:
            reg = self.registry()
            if reg is None:
                raise SettingsError("the .vbox has no media registry")
            self._attach(reg, disk)
            _set_attr_after(disk, "type", base_type or "Normal", after="format")
        else:
            disk.attrib.pop("type", None)
            self._attach(new_parent, disk)

    def remove_disk(self, disk: ET.Element) -> None:
        """Remove one <HardDisk> (its children must have been moved away first)."""
        holder = self.parent_of(disk)
        if holder is not None:
            self._detach(holder, disk)
        self.reindex()

    def add_disk(
        self,
        uuid: uuidlib.UUID,
        location: str,
        parent: ET.Element | None,
        base_type: str = "Normal",
    ) -> ET.Element:
        """Register a VDI, nested under ``parent`` (None: as a base)."""
        attrs = {"uuid": format_uuid(uuid), "location": location, "format": "VDI"}
        if parent is None:
            attrs["type"] = base_type
            reg = self.registry()
            if reg is None:
                media = self.machine.find(self.q("MediaRegistry"))
                if media is None:
                    media = ET.Element(self.q("MediaRegistry"))
                    self.machine.insert(0, media)
                reg = ET.SubElement(media, self.q("HardDisks"))
            holder = reg
        else:
            holder = parent
        element = ET.Element(self.q("HardDisk"), attrs)
        self._attach(holder, element)
        return element

    def repoint_images(self, old: uuidlib.UUID, new: uuidlib.UUID) -> int:
        """Make every <Image uuid=old> name ``new``; returns how many changed."""
        refs = self.image_refs(old)
        for ref in refs:
            ref.set("uuid", format_uuid(new))
        return len(refs)

    def relative_location(self, path: Path) -> str:
        """How VirtualBox writes a location: relative inside the machine folder, else absolute."""
        try:
            return (
                Path(os.path.relpath(path, self.folder)).as_posix()
                if _inside(path, self.folder)
                else str(path)
            )
        except ValueError:
            return str(path)


_NON_ASCII = re.compile(r"[^\x00-\x7f]")


def _escape_text(text: str) -> str:
    # VirtualBox's libxml2 writer emits non-ASCII characters as numeric references.
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _NON_ASCII.sub(lambda m: f"&#x{ord(m.group()):X};", text)


def _escape_attr(text: str) -> str:
    return (
        _escape_text(text)
        .replace('"', "&quot;")
        .replace("\n", "&#10;")
        .replace("\r", "&#13;")
        .replace("\t", "&#9;")
    )


def _serialize(el: ET.Element, out: list[str], ns: str, *, root: bool = False) -> None:
    """Write ``el`` the way VirtualBox's writer does (``<a b="c"/>``, default namespace).

    ElementTree's own writer cannot combine a default namespace with unqualified attribute
    names, so the few lines of serialisation live here.
    """
    if el.tag is ET.Comment:  # type: ignore[comparison-overlap]
        out.append(f"<!--{el.text or ''}-->")
    elif el.tag is ET.ProcessingInstruction:  # type: ignore[comparison-overlap]
        out.append(f"<?{el.text or ''}?>")
    else:
        tag = str(el.tag)
        extra = ""
        if tag.startswith("{"):
            uri, local = tag[1:].split("}", 1)
            if uri != ns:
                extra = f' xmlns="{_escape_attr(uri)}"'
            tag = local
        if root and ns:
            extra = f' xmlns="{_escape_attr(ns)}"'
        attrs = "".join(
            f' {str(k).rsplit("}", 1)[-1]}="{_escape_attr(str(v))}"' for k, v in el.attrib.items()
        )
        if len(el) == 0 and not el.text:
            out.append(f"<{tag}{extra}{attrs}/>")
        else:
            out.append(f"<{tag}{extra}{attrs}>")
            if el.text:
                out.append(_escape_text(el.text))
            for child in el:
                _serialize(child, out, ns)
            out.append(f"</{tag}>")
    if el.tail and not root:
        out.append(_escape_text(el.tail))


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def is_inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` (symlinks resolved) lies inside ``folder``.

    A path that is not absolute (a Windows ``C:/...`` location read on another OS) is never
    inside: it would otherwise resolve against the current directory.
    """
    return path.is_absolute() and _inside(path, folder)


def _int(text: str | None) -> int:
    """An integer attribute, 0 when absent or not a number (VirtualBox's default)."""
    try:
        return int(text or 0)
    except ValueError:
        return 0


def _set_attr_after(element: ET.Element, name: str, value: str, after: str) -> None:
    """Set an attribute, placing a new one right after ``after`` to keep VirtualBox's order."""
    if name in element.attrib:
        element.set(name, value)
        return
    items = list(element.attrib.items())
    element.attrib.clear()
    placed = False
    for key, val in items:
        element.set(key, val)
        if key == after:
            element.set(name, value)
            placed = True
    if not placed:
        element.set(name, value)


def write_settings_file(path: Path, data: bytes) -> None:
    """Write a settings file safely: ``-tmp``, flush, keep the old as ``-prev``, rename.

    ``<file>`` itself is replaced with one atomic rename, so a crash leaves either the old or
    the new file there; a leftover ``<file>-tmp`` means the save did not finish.
    """
    tmp = path.with_name(path.name + "-tmp")
    prev = path.with_name(path.name + "-prev")
    fileio.write_file_durable(tmp, data)
    with contextlib.suppress(OSError):
        fileio.chmod(tmp, stat.S_IMODE(path.stat().st_mode))
    if path.exists() and path.stat().st_size >= 16:
        fileio.unlink(prev, missing_ok=True)
        try:
            fileio.link(path, prev)
        except OSError:
            fileio.copy_file_durable(path, prev, mode=stat.S_IMODE(path.stat().st_mode))
    fileio.replace(tmp, path)
    fileio.fsync_dir(path.parent)
