"""vdigui's engine: VDI files, chains, VM folders, analysis and the operations on them.

This package never imports Qt or pyqtgraph: the CLI, the GUI and tests all stand on it. The GUI
uses only the names listed here (one table, so the public surface is visible at a glance).

Names are imported on first use (PEP 562): ``vdictl info`` should not pay for loading the
guest-filesystem readers and every operation just to read one header.
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "human_size": "vdigui.engine.units",
    "Analysis": "vdigui.engine.analysis",
    "FragStats": "vdigui.engine.analysis",
    "HostExtents": "vdigui.engine.analysis",
    "ImageStats": "vdigui.engine.analysis",
    "Location": "vdigui.engine.analysis",
    "analyze": "vdigui.engine.analysis",
    "fragmentation": "vdigui.engine.analysis",
    "host_extents": "vdigui.engine.analysis",
    "image_stats": "vdigui.engine.analysis",
    "locate": "vdigui.engine.analysis",
    "scan_zero_blocks": "vdigui.engine.analysis",
    "ChainResolution": "vdigui.engine.chain",
    "DiskChain": "vdigui.engine.chain",
    "ImageIndex": "vdigui.engine.chain",
    "default_search_dirs": "vdigui.engine.chain",
    "open_chain": "vdigui.engine.chain",
    "open_paths": "vdigui.engine.chain",
    "resolve_chain": "vdigui.engine.chain",
    "CheckReport": "vdigui.engine.check",
    "Finding": "vdigui.engine.check",
    "check_image": "vdigui.engine.check",
    "check_path": "vdigui.engine.check",
    "damage_sentence": "vdigui.engine.check",
    "build_demo_vm": "vdigui.engine.demo",
    "default_cache_folder": "vdigui.engine.demo",
    "remove_demo": "vdigui.engine.demo",
    "ChainError": "vdigui.engine.errors",
    "HeaderError": "vdigui.engine.errors",
    "ImageCorruptError": "vdigui.engine.errors",
    "MissingParentError": "vdigui.engine.errors",
    "NotVdiImageError": "vdigui.engine.errors",
    "OperationCancelled": "vdigui.engine.errors",
    "OperationRefused": "vdigui.engine.errors",
    "SettingsError": "vdigui.engine.errors",
    "VdiError": "vdigui.engine.errors",
    "VerificationError": "vdigui.engine.errors",
    "ExportResult": "vdigui.engine.export",
    "check_writable_inputs": "vdigui.engine.operations.preflight",
    "list_leftovers": "vdigui.engine.operations.preflight",
    "sweep_leftovers": "vdigui.engine.operations.preflight",
    "export_raw": "vdigui.engine.export",
    "BLOCK_FREE": "vdigui.engine.format",
    "BLOCK_ZERO": "vdigui.engine.format",
    "NULL_UUID": "vdigui.engine.format",
    "SIGNATURE": "vdigui.engine.format",
    "FieldKind": "vdigui.engine.format",
    "HeaderField": "vdigui.engine.format",
    "ImageType": "vdigui.engine.format",
    "VdiHeader": "vdigui.engine.format",
    "header_layout": "vdigui.engine.format",
    "is_allocated": "vdigui.engine.format",
    "read_header": "vdigui.engine.format",
    "ReclaimForecast": "vdigui.engine.guestfs",
    "UsageMap": "vdigui.engine.guestfs",
    "Volume": "vdigui.engine.guestfs",
    "VdiImage": "vdigui.engine.image",
    "create_image": "vdigui.engine.image",
    "open_image": "vdigui.engine.image",
    "opened": "vdigui.engine.image",
    "ClonePlan": "vdigui.engine.operations.clone",
    "CloneResult": "vdigui.engine.operations.clone",
    "plan_clone": "vdigui.engine.operations.clone",
    "run_clone": "vdigui.engine.operations.clone",
    "CompactPlan": "vdigui.engine.operations.compact",
    "CompactResult": "vdigui.engine.operations.compact",
    "plan_compact": "vdigui.engine.operations.compact",
    "run_compact": "vdigui.engine.operations.compact",
    "ConvertPlan": "vdigui.engine.operations.convert",
    "ConvertResult": "vdigui.engine.operations.convert",
    "plan_convert": "vdigui.engine.operations.convert",
    "run_convert": "vdigui.engine.operations.convert",
    "RecoveryResult": "vdigui.engine.operations.journal",
    "UndoResult": "vdigui.engine.operations.journal",
    "discard_undo_data": "vdigui.engine.operations.journal",
    "last_operation": "vdigui.engine.operations.journal",
    "plan_undo": "vdigui.engine.operations.journal",
    "recover_pending": "vdigui.engine.operations.journal",
    "undo_data_usage": "vdigui.engine.operations.journal",
    "undo_last": "vdigui.engine.operations.journal",
    "MergePlan": "vdigui.engine.operations.merge",
    "MergeResult": "vdigui.engine.operations.merge",
    "list_snapshots": "vdigui.engine.operations.merge",
    "plan_merge": "vdigui.engine.operations.merge",
    "plan_snapshot_delete": "vdigui.engine.operations.merge",
    "run_merge": "vdigui.engine.operations.merge",
    "Fix": "vdigui.engine.operations.repair",
    "RepairPlan": "vdigui.engine.operations.repair",
    "RepairResult": "vdigui.engine.operations.repair",
    "plan_repair": "vdigui.engine.operations.repair",
    "plan_set_uuid": "vdigui.engine.operations.repair",
    "run_repair": "vdigui.engine.operations.repair",
    "CancelToken": "vdigui.engine.progress",
    "Progress": "vdigui.engine.progress",
    "ProgressFn": "vdigui.engine.progress",
    "no_progress": "vdigui.engine.progress",
    "chain_usage": "vdigui.engine.usage_report",
    "usage_report": "vdigui.engine.usage_report",
    "Attachment": "vdigui.engine.vmfolder",
    "GlobalSettings": "vdigui.engine.vmfolder",
    "MachineSettings": "vdigui.engine.vmfolder",
    "Medium": "vdigui.engine.vmfolder",
    "Problem": "vdigui.engine.vmfolder",
    "SnapshotNode": "vdigui.engine.vmfolder",
    "VmFolder": "vdigui.engine.vmfolder",
    "find_running_vm_hint": "vdigui.engine.vmfolder",
    "find_settings_file": "vdigui.engine.vmfolder",
    "load_settings": "vdigui.engine.vmfolder",
    "load_vm_folder": "vdigui.engine.vmfolder",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import the module that defines ``name`` the first time it is asked for."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'vdigui.engine' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
