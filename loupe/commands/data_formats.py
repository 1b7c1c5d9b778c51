"""data_formats commands."""
