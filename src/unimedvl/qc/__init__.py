"""The QC step: Great Expectations on the metadata, image and text checks, duplicates and leakage,
an optional alignment filter, and a report. `run_qc` is the library entry of the CLI, DVC and KFP.

Importing this package registers the QC reason codes in `unimedvl.data.schema.REASONS`.
"""

from __future__ import annotations

from .checks import QC_REASONS
from .run import QCError, run_qc

__all__ = ["QC_REASONS", "QCError", "run_qc"]
