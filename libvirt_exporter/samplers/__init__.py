"""Samplers: each refreshes part of the cached values on its own interval, under its own deadline."""
