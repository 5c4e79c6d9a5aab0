"""rstar policy service."""
