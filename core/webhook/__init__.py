"""The signal webhook: intake (read, authenticate, parse a delivery) and the ledger (record, latest)."""
