"""Ops for the experts and adaptive-depth catalogue: none are needed. Routing, capacity,
halting and the losses are written from existing ops in archc/stdlib/experts_adaptive.arch;
this module is where a fused kernel (such as a sparse expert dispatch) would go."""

from __future__ import annotations
