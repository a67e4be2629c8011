"""The interoperability testbed: PKI, token issuer and peers, shared with the test suite."""
