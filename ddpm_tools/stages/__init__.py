"""Stages: where to cut [1, T] into member intervals (uniform, equal log-SNR, or timestep
clustering after Zhang et al. 2024) and the plot of a clustering."""
