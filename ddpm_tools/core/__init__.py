"""The math core: noise schedules, Gaussian posteriors, KL terms, likelihoods, the DP.

Nothing here does I/O, parses arguments or prints. Schedules and coefficient tables
are float64 numpy arrays indexed by the integer time t in {0, ..., T}; elementwise
terms are torch functions that keep the dtype and device of their inputs.
"""
