"""data_synth commands."""
