"""Privacy: PII redaction, a per-dataset privacy budget ledger, DP accounting and DP stats.

Sub-modules: ``redact`` (the ``privacy.redact`` stage and ``redact(text)``), ``ledger``,
``accounting`` (opacus accountants by name), ``logstats`` (OpenDP counts over request logs),
``redact_eval`` (labelled prompt set). The function ``redact`` is deliberately not
re-exported here: it would shadow the sub-module of the same name.
"""

from __future__ import annotations

from trustgain.privacy.ledger import BudgetExceeded, Ledger, Spend
from trustgain.privacy.redact import KINDS, RedactPII

__all__ = ["KINDS", "BudgetExceeded", "Ledger", "RedactPII", "Spend"]
