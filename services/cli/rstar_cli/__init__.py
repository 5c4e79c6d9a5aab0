"""rstar cli service."""
