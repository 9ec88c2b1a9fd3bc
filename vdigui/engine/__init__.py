"""vdigui's engine: VDI files, chains, VM folders, analysis and the operations on them.

This package never imports Qt or pyqtgraph: the CLI, the GUI and tests all stand on it. The GUI
uses only the names re-exported here (one list, so the public surface is visible at a glance).
"""

from __future__ import annotations

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
from vdigui.engine.chain import (
    ChainResolution,
    DiskChain,
    ImageIndex,
    default_search_dirs,
    open_chain,
    open_paths,
    resolve_chain,
)
from vdigui.engine.check import (
    CheckReport,
    Finding,
    check_image,
    check_path,
)
from vdigui.engine.demo import (
    build_demo_vm,
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
from vdigui.engine.export import (
    ExportResult,
    export_raw,
)
from vdigui.engine.format import (
    BLOCK_FREE,
    BLOCK_ZERO,
    NULL_UUID,
    ImageType,
    VdiHeader,
    read_header,
)
from vdigui.engine.guestfs import (
    ReclaimForecast,
    UsageMap,
    Volume,
)
from vdigui.engine.image import (
    VdiImage,
    create_image,
    open_image,
    opened,
)
from vdigui.engine.operations.clone import (
    ClonePlan,
    CloneResult,
    plan_clone,
    run_clone,
)
from vdigui.engine.operations.compact import (
    CompactPlan,
    CompactResult,
    plan_compact,
    run_compact,
)
from vdigui.engine.operations.convert import (
    ConvertPlan,
    ConvertResult,
    plan_convert,
    run_convert,
)
from vdigui.engine.operations.journal import (
    RecoveryResult,
    UndoResult,
    recover_pending,
    undo_last,
)
from vdigui.engine.operations.merge import (
    MergePlan,
    MergeResult,
    list_snapshots,
    plan_merge,
    plan_snapshot_delete,
    run_merge,
)
from vdigui.engine.operations.repair import (
    Fix,
    RepairPlan,
    RepairResult,
    plan_repair,
    plan_set_uuid,
    run_repair,
)
from vdigui.engine.progress import (
    CancelToken,
    Progress,
    ProgressFn,
    no_progress,
)
from vdigui.engine.usage_report import (
    chain_usage,
    usage_report,
)
from vdigui.engine.vmfolder import (
    Attachment,
    GlobalSettings,
    MachineSettings,
    Medium,
    Problem,
    SnapshotNode,
    VmFolder,
    find_running_vm_hint,
    find_settings_file,
    load_settings,
    load_vm_folder,
)

__all__ = [
    "BLOCK_FREE",
    "BLOCK_ZERO",
    "NULL_UUID",
    "Analysis",
    "Attachment",
    "CancelToken",
    "ChainError",
    "ChainResolution",
    "CheckReport",
    "ClonePlan",
    "CloneResult",
    "CompactPlan",
    "CompactResult",
    "ConvertPlan",
    "ConvertResult",
    "DiskChain",
    "ExportResult",
    "Finding",
    "Fix",
    "FragStats",
    "GlobalSettings",
    "HeaderError",
    "HostExtents",
    "ImageCorruptError",
    "ImageIndex",
    "ImageStats",
    "ImageType",
    "Location",
    "MachineSettings",
    "Medium",
    "MergePlan",
    "MergeResult",
    "MissingParentError",
    "OperationCancelled",
    "OperationRefused",
    "Problem",
    "Progress",
    "ProgressFn",
    "ReclaimForecast",
    "RecoveryResult",
    "RepairPlan",
    "RepairResult",
    "SettingsError",
    "SnapshotNode",
    "UndoResult",
    "UsageMap",
    "VdiError",
    "VdiHeader",
    "VdiImage",
    "VerificationError",
    "VmFolder",
    "Volume",
    "analyze",
    "build_demo_vm",
    "chain_usage",
    "check_image",
    "check_path",
    "create_image",
    "default_search_dirs",
    "export_raw",
    "find_running_vm_hint",
    "find_settings_file",
    "fragmentation",
    "host_extents",
    "image_stats",
    "list_snapshots",
    "load_settings",
    "load_vm_folder",
    "locate",
    "no_progress",
    "open_chain",
    "open_image",
    "open_paths",
    "opened",
    "plan_clone",
    "plan_compact",
    "plan_convert",
    "plan_merge",
    "plan_repair",
    "plan_set_uuid",
    "plan_snapshot_delete",
    "read_header",
    "recover_pending",
    "resolve_chain",
    "run_clone",
    "run_compact",
    "run_convert",
    "run_merge",
    "run_repair",
    "scan_zero_blocks",
    "undo_last",
    "usage_report",
]
