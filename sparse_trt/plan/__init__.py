"""Sensitivity-aware sparsity plans: a stage above prune and eval (it prunes and measures), below the CLI."""

from .plan import (
           PLAN_FORMAT,
           PLAN_VERSION,
           Plan,
           PlanRequest,
           choose_count,
           gemm_speedups,
           load_plan,
           make_plan,
           rank_linears,
)

__all__ = ["PLAN_FORMAT", "PLAN_VERSION", "Plan", "PlanRequest", "choose_count", "gemm_speedups", "load_plan",
           "make_plan", "rank_linears"]
