"""Scores and labels in, numbers out: thresholds, F1s, mAP, hierarchy levels and class subsets, the
evaluation report.
"""
