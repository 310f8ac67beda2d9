"""Evidence for a cascade: `kascade eval` (cost–quality curves on real data) and `kascade calibrate` (thresholds from a goal)."""
