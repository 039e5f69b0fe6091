"""What every stage shares: audio decoding and resampling, the student's log-mel features,
device choice, the registries of named components, metrics, and the one reading path over a
store's rows (used by compress, distill, evaluate and probe)."""
