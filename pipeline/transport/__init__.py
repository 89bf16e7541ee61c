"""NATS plumbing, all of it: connecting (probe + long-lived), the embedded broker, asyncio helpers, the client
side of generate, the workers' runtime (`worker_base`), JetStream setup (`jetstream`), the edge's timing
outbox, and confirming that the broker processed what was sent (`confirm`)."""
