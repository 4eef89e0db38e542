"""Readers that turn paths into Samples, one at a time."""
