"""BIDS input/output helpers: sidecar inheritance, protocol override files."""
