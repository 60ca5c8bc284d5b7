"""Quality evaluation: perplexity on held-out text."""
