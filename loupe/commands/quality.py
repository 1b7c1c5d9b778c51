"""quality commands."""
