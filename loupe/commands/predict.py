"""predict commands."""
