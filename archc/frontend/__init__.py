"""The frontend: `.arch` text -> typed AST (`parse`). Nothing after this package imports lark."""

from archc.frontend.parser import parse

__all__ = ["parse"]
