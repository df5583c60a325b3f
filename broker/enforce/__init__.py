"""Enforcement: apply a policy plan to a payload, and restore the buyer's own values after."""
