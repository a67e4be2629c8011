"""The aiohttp edge: TLS, request parsing into plain values, error mapping, access log."""
