"""Bearer tokens -> principals (tenant, subject, roles)."""
