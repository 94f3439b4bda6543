"""Core layer: sites (where), hook sessions (how to act there), output trees, graphs."""
