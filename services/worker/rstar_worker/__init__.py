"""rstar worker."""
