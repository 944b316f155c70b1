"""phys-bids: physics-aware, acquisition-invariant brain MRI processing as a BIDS-App."""

__version__ = "0.1.0.dev0"
