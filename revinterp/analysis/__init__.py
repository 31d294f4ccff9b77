"""Analyses of trained models: prompt pairs, metrics, patching, attribution (the pipeline's fifth stage)."""
