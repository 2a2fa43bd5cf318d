"""Few-shot adaptation of the avatar prior to a new subject, and its evaluation."""
