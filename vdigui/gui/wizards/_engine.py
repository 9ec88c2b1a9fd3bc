"""The engine verbs the wizards drive, in one place.

Why a module of its own: the wizards reach the engine only through ``vdigui.engine``'s public
names (architecture 2.2), and tests replace the plan/run functions through the wizards'
constructors; collecting the imports here keeps that surface visible in one screenful.
"""

from __future__ import annotations

import vdigui.engine as _public
from vdigui.engine import (
    ClonePlan,
    CloneResult,
    CompactPlan,
    CompactResult,
    ConvertPlan,
    ConvertResult,
    Fix,
    MergeDirection,
    MergePlan,
    MergeResult,
    RepairPlan,
    RepairResult,
    ResizeLimits,
    ResizePlan,
    ResizeResult,
    StepAction,
    Strength,
    human_size,
    plan_clone,
    plan_compact,
    plan_convert,
    plan_repair,
    plan_resize,
    plan_snapshot_delete,
    resize_limits,
    run_clone,
    run_compact,
    run_convert,
    run_merge,
    run_repair,
    run_resize,
)

#: A rough sustained rate for time estimates (bytes per second), the same the merge plan uses.
ESTIMATED_RATE = getattr(_public, "ESTIMATED_RATE", 200 << 20)

__all__ = [
    "ESTIMATED_RATE",
    "ClonePlan",
    "CloneResult",
    "CompactPlan",
    "CompactResult",
    "ConvertPlan",
    "ConvertResult",
    "Fix",
    "MergeDirection",
    "MergePlan",
    "MergeResult",
    "RepairPlan",
    "RepairResult",
    "ResizeLimits",
    "ResizePlan",
    "ResizeResult",
    "StepAction",
    "Strength",
    "human_size",
    "plan_clone",
    "plan_compact",
    "plan_convert",
    "plan_repair",
    "plan_resize",
    "plan_snapshot_delete",
    "resize_limits",
    "run_clone",
    "run_compact",
    "run_convert",
    "run_merge",
    "run_repair",
    "run_resize",
]
