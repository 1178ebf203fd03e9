"""The op table. Importing this package registers every op family into `OPS`."""

from archc.ops import (  # noqa: F401  (registration)
    attention,
    cat_adaptive,
    cat_memory,
    cat_sparse,
    conv,
    elementwise,
    fused,
    linalg,
    quant,
    reduce,
    rotary,
    sdpa_past,
    shape,
)
from archc.ops.registry import OPS, OpDef, get_op, register_op

__all__ = ["OPS", "OpDef", "get_op", "register_op"]
