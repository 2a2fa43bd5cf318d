"""Learning: loaders, the avatar prior, few-shot adaptation, metrics and reports."""
