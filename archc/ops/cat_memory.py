"""Ops for the memory and retrieval catalogue: none so far.

Transformer-XL, the Compressive Transformer, RETRO and Fusion-in-Decoder are written in
`archc/stdlib/memory_retrieval.arch` over existing ops. The relative shift is a `gather`, the
compression runs on `avg_pool1d`, `max_pool1d` and `conv1d`, and RETRO's chunking is done with
`gather` and `pad`. The axis folds in `archc/lower/cat_memory.py` emit `reshape_to`.
"""

from __future__ import annotations
