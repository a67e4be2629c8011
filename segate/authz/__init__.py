"""Authorization: pure decisions over Principals, operations and paths."""
