"""Read-only item models that adapt the engine's values (snapshot tree, media, problems)."""
