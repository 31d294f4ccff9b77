"""Figures and the self-contained HTML report (the pipeline's last stage)."""
