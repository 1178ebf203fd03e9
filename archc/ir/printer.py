"""The stable text form of a Graph, used by `archc dump`, golden tests and error messages.

Grammar (one node per line, in `Graph.nodes()` order):

    graph   := "graph " NAME " {" NL line* "}" NL
    line    := "  " value ":" type " = " rhs scope? NL | "  output " NAME " = " value NL
    value   := "%" INT
    type    := DTYPE "[" (dim ("," dim)*)? "]"        DTYPE in f32 | i64 | b8
    rhs     := "input " QUOTED
             | "param " QUOTED " {" attrs "}"
             | "const " literal
             | OP "(" (value (", " value)*)? ")" (" {" attrs "}")?
    attrs   := key "=" literal (", " key "=" literal)*   keys sorted
    scope   := "  # " SCOPE                              where in the spec the node came from
    literal := repr of ints/bools/strings, floats via repr(float), tuples as (a, b);
               a const array prints inline when it has at most 8 elements, else as
               "<f32[shape] sha256:12 hex digits>"

Everything is sorted or ordered by node id, so the same spec prints the same bytes.
"""

from __future__ import annotations

import hashlib

import numpy as np

from archc.ir.graph import Graph, Node


def fmt_literal(v) -> str:
    if isinstance(v, bool | np.bool_):
        return "true" if v else "false"
    if isinstance(v, float | np.floating):
        return repr(float(v))
    if isinstance(v, int | np.integer):
        return str(int(v))
    if isinstance(v, str):
        return '"' + v + '"'
    if isinstance(v, tuple | list):
        return "(" + ", ".join(fmt_literal(x) for x in v) + ")"
    if isinstance(v, np.ndarray):
        return fmt_array(v)
    return str(v)


def fmt_array(a: np.ndarray) -> str:
    if a.size <= 8:
        if a.ndim == 0:
            return fmt_literal(a.item())
        return "[" + ", ".join(fmt_literal(x) for x in a.reshape(-1).tolist()) + "]"
    digest = hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:12]
    return f"<{a.dtype}{list(a.shape)} sha256:{digest}>"


def fmt_attrs(attrs: dict) -> str:
    return ", ".join(f"{k}={fmt_literal(attrs[k])}" for k in sorted(attrs))


def fmt_node(n: Node) -> str:
    head = f"%{n.id}:{n.type}" if n.type is not None else f"%{n.id}:?"
    if n.kind == "input":
        rhs = f'input "{n.name}"'
    elif n.kind == "param":
        rhs = f'param "{n.name}" {{{fmt_attrs(n.attrs)}}}'
    elif n.kind == "const":
        rhs = f"const {fmt_array(n.value)}"
    else:
        rhs = f"{n.op}({', '.join(repr(i) for i in n.inputs)})"
        if n.attrs:
            rhs += f" {{{fmt_attrs(n.attrs)}}}"
    scope = f"  # {n.scope}" if n.scope and n.kind == "op" else ""
    return f"{head} = {rhs}{scope}"


def print_graph(g: Graph) -> str:
    lines = [f"graph {g.name} {{"]
    lines += ["  " + fmt_node(n) for n in g.nodes()]
    lines += [f"  output {name} = %{node.id}" for name, node in g.outputs.items()]
    return "\n".join(lines) + "\n}\n"
