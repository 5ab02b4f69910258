"""Local services for development and tests, off the production path: the embedded object
store, a local Prometheus, the throttle proxy, process and port helpers, a local Ray head."""
