"""unifairseq-serve: one base and many deltas behind an HTTP endpoint, requests for any deltas batched
together (docs/serving.md). config: the options; engine: the hub; scheduler: the queue and its thread;
schema: the request bodies; app: the HTTP API; metrics: Prometheus text; cli: the console script;
loadtest: the load test."""
