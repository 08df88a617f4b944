"""Packing benchmark: N small encoders in one explicit-mode Triton vs N servers of one model each."""
