"""vdigui's engine: VDI files, chains, VM folders and the operations on them.

This package never imports Qt or pyqtgraph: the CLI, the GUI and tests all stand on it. The GUI uses
only the names re-exported here.
"""

from vdigui.engine.chain import (
    ChainResolution,
    DiskChain,
    ImageIndex,
    default_search_dirs,
    open_chain,
    open_paths,
    resolve_chain,
)
from vdigui.engine.errors import (
    ChainError,
    HeaderError,
    ImageCorruptError,
    MissingParentError,
    OperationCancelled,
    OperationRefused,
    SettingsError,
    VdiError,
    VerificationError,
)
from vdigui.engine.format import (
    BLOCK_FREE,
    BLOCK_ZERO,
    NULL_UUID,
    ImageType,
    VdiHeader,
    read_header,
)
from vdigui.engine.image import VdiImage, create_image, open_image, opened
from vdigui.engine.progress import CancelToken, Progress, ProgressFn, no_progress

__all__ = [
    "BLOCK_FREE",
    "BLOCK_ZERO",
    "NULL_UUID",
    "CancelToken",
    "ChainError",
    "ChainResolution",
    "DiskChain",
    "HeaderError",
    "ImageCorruptError",
    "ImageIndex",
    "ImageType",
    "MissingParentError",
    "OperationCancelled",
    "OperationRefused",
    "Progress",
    "ProgressFn",
    "SettingsError",
    "VdiError",
    "VdiHeader",
    "VdiImage",
    "VerificationError",
    "create_image",
    "default_search_dirs",
    "no_progress",
    "open_chain",
    "open_image",
    "open_paths",
    "opened",
    "read_header",
    "resolve_chain",
]
