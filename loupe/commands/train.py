"""train commands."""
