"""untunable's core. Importing this package is cheap (no torch): plugins need only `hookimpl`, `Param`, `Measure`,
`ReferenceStart` and (for metrics) `Column`."""

from harness.hookspecs import hookimpl
from harness.registry import Column, Measure, Param, ReferenceStart

__all__ = ["hookimpl", "Column", "Measure", "Param", "ReferenceStart"]
