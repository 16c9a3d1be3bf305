"""Synthetic data: geo-referenced test orthophotos now, the synthetic city later."""
