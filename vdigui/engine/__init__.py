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

# Re-exports the GUI uses (appended by the GUI work; see issue 3).
from vdigui.engine.analysis import (
    Analysis,
    FragStats,
    HostExtents,
    ImageStats,
    Location,
    analyze,
    fragmentation,
    host_extents,
    image_stats,
    locate,
    scan_zero_blocks,
)
from vdigui.engine.vmfolder import Problem, SnapshotNode, VmFolder, load_vm_folder

__all__ += [
    "Analysis", "FragStats", "HostExtents", "ImageStats", "Location", "Problem", "SnapshotNode",
    "VmFolder", "analyze", "fragmentation", "host_extents", "image_stats", "load_vm_folder",
    "locate", "scan_zero_blocks",
]

# Re-exports of the VM-folder model (appended by the vmfolder work).
from vdigui.engine.vmfolder import (  # noqa: E402
    Attachment,
    GlobalSettings,
    MachineSettings,
    Medium,
    find_running_vm_hint,
    find_settings_file,
    load_settings,
)

__all__ += [
    "Attachment", "GlobalSettings", "MachineSettings", "Medium", "find_running_vm_hint",
    "find_settings_file", "load_settings",
]

# Re-exports of the compact / clone / convert operations (issue 4).
from vdigui.engine.operations.clone import (  # noqa: E402
    ClonePlan,
    CloneResult,
    plan_clone,
    run_clone,
)
from vdigui.engine.operations.compact import (  # noqa: E402
    CompactPlan,
    CompactResult,
    plan_compact,
    run_compact,
)
from vdigui.engine.operations.convert import (  # noqa: E402
    ConvertPlan,
    ConvertResult,
    plan_convert,
    run_convert,
)

__all__ += [
    "ClonePlan", "CloneResult", "CompactPlan", "CompactResult", "ConvertPlan", "ConvertResult",
    "plan_clone", "plan_compact", "plan_convert", "run_clone", "run_compact", "run_convert",
]

# Snapshot deletion, merges, repair and undo (issue 5).
from vdigui.engine.operations.journal import (  # noqa: E402
    RecoveryResult,
    UndoResult,
    recover_pending,
    undo_last,
)
from vdigui.engine.operations.merge import (  # noqa: E402
    MergePlan,
    MergeResult,
    list_snapshots,
    plan_merge,
    plan_snapshot_delete,
    run_merge,
)
from vdigui.engine.operations.repair import (  # noqa: E402
    Fix,
    RepairPlan,
    RepairResult,
    plan_repair,
    plan_set_uuid,
    run_repair,
)

__all__ += [
    "Fix", "MergePlan", "MergeResult", "RecoveryResult", "RepairPlan", "RepairResult",
    "UndoResult", "list_snapshots", "plan_merge", "plan_repair", "plan_set_uuid",
    "plan_snapshot_delete", "recover_pending", "run_merge", "run_repair", "undo_last",
]
