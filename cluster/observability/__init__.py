"""What a run measures and shows: metrics (one table of names), the per-run monitor actor, the
timeline."""
