"""Campaigns: what an experiment is, where its trials go, and what its numbers mean."""
