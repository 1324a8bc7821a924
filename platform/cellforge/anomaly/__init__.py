"""Anomaly detection: a step's score is how badly the network predicts it (``forecast``) or rebuilds
the window that ends at it (``reconstruct``), standardised on held-out normal data; a threshold
calibrated there turns scores into flags and intervals.

``decoder`` is reconstruct's recurrent decoder, written once against the ops namespace; ``scores``
turns a series into per-step scores, calibrates the threshold and finds the flagged intervals. Their
metrics live in :mod:`cellforge.metrics`, the data with known anomalies in
:mod:`cellforge.data.anomalies`.
"""
