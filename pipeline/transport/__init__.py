"""NATS plumbing: connecting (probe + long-lived), the embedded broker, asyncio helpers, the client side of generate."""
