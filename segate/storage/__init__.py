"""Storage: the POSIX namespace under one root. Knows nothing of HTTP or principals."""
