"""feedline's orchestration: Ray Train DDP over the `pipelines` stream, the embedded object store,
and (in later issues) metrics, the pool scaling policy and its controller."""
