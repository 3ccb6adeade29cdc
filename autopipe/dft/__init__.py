"""Module C, the DFT factory: label structures with pw.x or an analytic oracle.

``label(atoms, dft_config)`` returns a :class:`LabelResult` with a status (done, failed,
refused) instead of raising; ``store_label`` records it in the run database.
Importing this package loads only ASE and numpy; pw.x support, oracles and the database
are imported when used.
"""

from __future__ import annotations

from autopipe.dft.label import label, store_label
from autopipe.dft.result import LabelResult

__all__ = ["LabelResult", "label", "store_label"]
