"""Assets by stage: one module per pipeline stage."""
