"""feedline's orchestration around the `pipelines` stream, one concept per sub-package:

* `cluster.training`: Ray Train DDP over the stream (config, model, the per-rank loop, epochs,
  device prefetch, the trainer and its run summary, joining a cluster);
* `cluster.echo`: the automatic echo factor (pure rule + the per-run controller actor);
* `cluster.pool`: sizing the dedicated CPU pool (pure policy, the scaler that applies it, the
  discrete-event simulator that compares policies at scale);
* `cluster.observability`: metrics, the per-run monitor, the timeline;
* `cluster.local`: local services for development and tests only (embedded object store,
  Prometheus, throttle proxy, process helpers, a local Ray head): off the production path;
* `cluster.bench`: the benchmark and experiment harnesses behind `jobs/`.
"""
