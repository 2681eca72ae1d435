"""Privacy accounting, mechanisms and the privacy ledger."""
