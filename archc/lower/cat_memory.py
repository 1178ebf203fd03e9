"""memory primitives for the layer catalogue (being written)."""

from __future__ import annotations
