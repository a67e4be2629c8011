"""Authentication: turn a request's credentials into a Principal (facts only, no judgement)."""
