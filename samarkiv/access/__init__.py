"""Access control: who is asking (authentication), may they (policy), and the
record of it (samarkiv.audit)."""
