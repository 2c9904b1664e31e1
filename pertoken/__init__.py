"""The per-token study: per-token oracle labels, a hidden-state probe, generation that picks a member of a
nested family per token, and the study that sets the probe's controller against fixed skip rates."""
