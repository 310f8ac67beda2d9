"""Kascade's data plane: router, confidence scores, engines, cost ledger, local mode."""
