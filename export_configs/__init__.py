"""Model-id configs (TOML data, read by deploytool.build.registry); no code lives here."""
