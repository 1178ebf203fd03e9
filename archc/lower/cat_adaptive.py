"""Primitives for the experts and adaptive-depth catalogue: none are needed. Mixtures of experts,
the Universal Transformer with ACT and PonderNet are `.arch` blocks over the existing primitives
(archc/stdlib/experts_adaptive.arch); this module is where one would go."""

from __future__ import annotations
