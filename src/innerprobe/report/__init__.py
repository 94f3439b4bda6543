"""Plots and a self-contained static HTML report built from result files only."""

from .sections import Section, write_section  # noqa: F401
