"""Running workers and workloads: worker entry points, a local cluster of processes, prompt workloads."""
