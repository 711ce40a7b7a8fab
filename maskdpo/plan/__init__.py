"""`maskdpo plan`: per-GPU memory of every tensor × pipeline × data-parallel layout of a GPU count."""

from .layouts import LayoutPlan, PlanInputs, plan, recommend
from .memory import StateBytes, stage_state_bytes, state_bytes

__all__ = ["LayoutPlan", "PlanInputs", "StateBytes", "plan", "recommend", "stage_state_bytes", "state_bytes"]
