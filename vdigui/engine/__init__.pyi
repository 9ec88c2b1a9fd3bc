"""Types for the names vdigui.engine loads on first use (PEP 562, see __init__.py).

Type checkers read this file instead of __init__.py, whose ``__getattr__`` would make every
public name ``Any``. It names exactly the keys of ``_EXPORTS`` (tests/test_contract.py checks
that), each imported from the module the table gives.
"""

from vdigui.engine.analysis import Analysis as Analysis
from vdigui.engine.analysis import FragStats as FragStats
from vdigui.engine.analysis import HostExtents as HostExtents
from vdigui.engine.analysis import ImageStats as ImageStats
from vdigui.engine.analysis import Location as Location
from vdigui.engine.analysis import analyze as analyze
from vdigui.engine.analysis import fragmentation as fragmentation
from vdigui.engine.analysis import host_extents as host_extents
from vdigui.engine.analysis import image_stats as image_stats
from vdigui.engine.analysis import locate as locate
from vdigui.engine.analysis import scan_zero_blocks as scan_zero_blocks
from vdigui.engine.chain import ChainResolution as ChainResolution
from vdigui.engine.chain import DiskChain as DiskChain
from vdigui.engine.chain import ImageIndex as ImageIndex
from vdigui.engine.chain import default_search_dirs as default_search_dirs
from vdigui.engine.chain import open_chain as open_chain
from vdigui.engine.chain import open_paths as open_paths
from vdigui.engine.chain import resolve_chain as resolve_chain
from vdigui.engine.check import CheckReport as CheckReport
from vdigui.engine.check import Finding as Finding
from vdigui.engine.check import check_image as check_image
from vdigui.engine.check import check_path as check_path
from vdigui.engine.check import damage_sentence as damage_sentence
from vdigui.engine.demo import build_demo_vm as build_demo_vm
from vdigui.engine.demo import default_cache_folder as default_cache_folder
from vdigui.engine.demo import remove_demo as remove_demo
from vdigui.engine.errors import ChainError as ChainError
from vdigui.engine.errors import HeaderError as HeaderError
from vdigui.engine.errors import ImageCorruptError as ImageCorruptError
from vdigui.engine.errors import MissingParentError as MissingParentError
from vdigui.engine.errors import NotVdiImageError as NotVdiImageError
from vdigui.engine.errors import OperationCancelled as OperationCancelled
from vdigui.engine.errors import OperationRefused as OperationRefused
from vdigui.engine.errors import SettingsError as SettingsError
from vdigui.engine.errors import VdiError as VdiError
from vdigui.engine.errors import VerificationError as VerificationError
from vdigui.engine.export import ExportResult as ExportResult
from vdigui.engine.export import export_raw as export_raw
from vdigui.engine.format import BLOCK_FREE as BLOCK_FREE
from vdigui.engine.format import BLOCK_ZERO as BLOCK_ZERO
from vdigui.engine.format import NULL_UUID as NULL_UUID
from vdigui.engine.format import SIGNATURE as SIGNATURE
from vdigui.engine.format import FieldKind as FieldKind
from vdigui.engine.format import HeaderField as HeaderField
from vdigui.engine.format import ImageType as ImageType
from vdigui.engine.format import VdiHeader as VdiHeader
from vdigui.engine.format import header_layout as header_layout
from vdigui.engine.format import is_allocated as is_allocated
from vdigui.engine.format import read_header as read_header
from vdigui.engine.guestfs import ReclaimForecast as ReclaimForecast
from vdigui.engine.guestfs import UsageMap as UsageMap
from vdigui.engine.guestfs import Volume as Volume
from vdigui.engine.image import VdiImage as VdiImage
from vdigui.engine.image import create_image as create_image
from vdigui.engine.image import open_image as open_image
from vdigui.engine.image import opened as opened
from vdigui.engine.operations.clone import ClonePlan as ClonePlan
from vdigui.engine.operations.clone import CloneResult as CloneResult
from vdigui.engine.operations.clone import plan_clone as plan_clone
from vdigui.engine.operations.clone import run_clone as run_clone
from vdigui.engine.operations.compact import CompactPlan as CompactPlan
from vdigui.engine.operations.compact import CompactResult as CompactResult
from vdigui.engine.operations.compact import plan_compact as plan_compact
from vdigui.engine.operations.compact import run_compact as run_compact
from vdigui.engine.operations.convert import ConvertPlan as ConvertPlan
from vdigui.engine.operations.convert import ConvertResult as ConvertResult
from vdigui.engine.operations.convert import plan_convert as plan_convert
from vdigui.engine.operations.convert import run_convert as run_convert
from vdigui.engine.operations.journal import RecoveryResult as RecoveryResult
from vdigui.engine.operations.journal import UndoResult as UndoResult
from vdigui.engine.operations.journal import discard_undo_data as discard_undo_data
from vdigui.engine.operations.journal import last_operation as last_operation
from vdigui.engine.operations.journal import plan_undo as plan_undo
from vdigui.engine.operations.journal import recover_pending as recover_pending
from vdigui.engine.operations.journal import undo_data_usage as undo_data_usage
from vdigui.engine.operations.journal import undo_last as undo_last
from vdigui.engine.operations.merge import MergePlan as MergePlan
from vdigui.engine.operations.merge import MergeResult as MergeResult
from vdigui.engine.operations.merge import list_snapshots as list_snapshots
from vdigui.engine.operations.merge import plan_merge as plan_merge
from vdigui.engine.operations.merge import plan_snapshot_delete as plan_snapshot_delete
from vdigui.engine.operations.merge import run_merge as run_merge
from vdigui.engine.operations.preflight import check_writable_inputs as check_writable_inputs
from vdigui.engine.operations.preflight import list_leftovers as list_leftovers
from vdigui.engine.operations.preflight import sweep_leftovers as sweep_leftovers
from vdigui.engine.operations.repair import Fix as Fix
from vdigui.engine.operations.repair import RepairPlan as RepairPlan
from vdigui.engine.operations.repair import RepairResult as RepairResult
from vdigui.engine.operations.repair import plan_repair as plan_repair
from vdigui.engine.operations.repair import plan_set_uuid as plan_set_uuid
from vdigui.engine.operations.repair import run_repair as run_repair
from vdigui.engine.progress import CancelToken as CancelToken
from vdigui.engine.progress import Progress as Progress
from vdigui.engine.progress import ProgressFn as ProgressFn
from vdigui.engine.progress import no_progress as no_progress
from vdigui.engine.units import human_size as human_size
from vdigui.engine.usage_report import chain_usage as chain_usage
from vdigui.engine.usage_report import usage_report as usage_report
from vdigui.engine.vmfolder import Attachment as Attachment
from vdigui.engine.vmfolder import GlobalSettings as GlobalSettings
from vdigui.engine.vmfolder import MachineSettings as MachineSettings
from vdigui.engine.vmfolder import Medium as Medium
from vdigui.engine.vmfolder import Problem as Problem
from vdigui.engine.vmfolder import SnapshotNode as SnapshotNode
from vdigui.engine.vmfolder import VmFolder as VmFolder
from vdigui.engine.vmfolder import find_running_vm_hint as find_running_vm_hint
from vdigui.engine.vmfolder import find_settings_file as find_settings_file
from vdigui.engine.vmfolder import load_settings as load_settings
from vdigui.engine.vmfolder import load_vm_folder as load_vm_folder

_EXPORTS: dict[str, str]
__all__: list[str]

def __dir__() -> list[str]: ...
