"""Model-id configs (TOML data, read by deploytool.registry); no code lives here."""
