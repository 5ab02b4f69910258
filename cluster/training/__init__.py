"""Ray Train DDP over the feedline stream: config, model, per-rank loop, trainer."""
