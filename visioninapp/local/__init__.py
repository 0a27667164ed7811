"""VisionInApp on one machine, for a first run, the demo, the tests and the benchmarks: local mode
(`visioninapp local up`), the demo, the real Kubernetes control plane they run on (built from
source, `cluster/`), process supervision and the synthetic shapes dataset. Nothing in a deployed
platform imports this."""
