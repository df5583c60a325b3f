"""Model registry: vendors publish model versions; buyers resolve references to them."""
