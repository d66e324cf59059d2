"""Projectors from vision-token space to LLM-embedding space, in an exact-name registry."""
