"""archc: a declarative architecture compiler and graph IR for transformer models."""

from archc.api import compile, optimize, parse, parse_file, run
from archc.backends.onnx_export import export_onnx
from archc.diagnostics import ArchcError
from archc.ir.graph import Graph
from archc.ir.printer import print_graph
from archc.kvcache import Session
from archc.lower import lower
from archc.runner import Runner
from archc.weights import init_params, load_weights, save_weights

__all__ = [
    "ArchcError",
    "Graph",
    "Runner",
    "Session",
    "compile",
    "export_onnx",
    "init_params",
    "load_weights",
    "lower",
    "optimize",
    "parse",
    "parse_file",
    "print_graph",
    "run",
    "save_weights",
]
