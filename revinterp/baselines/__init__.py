"""Faithful re-implementations of other codes' recipes, to measure revinterp against them in one process."""
