"""The op table. Importing this package registers every op family into `OPS`."""

from archc.ops import attention, elementwise, linalg, shape  # noqa: F401  (registration)
from archc.ops.registry import OPS, OpDef, get_op, register_op

__all__ = ["OPS", "OpDef", "get_op", "register_op"]
