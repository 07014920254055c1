"""Sample-quality metrics.

- :mod:`~ddpm_tools.metrics.distances`: Frechet distance, KID and precision/recall on
  feature arrays ``[N, F]`` (pure numpy, float64).
- :mod:`~ddpm_tools.metrics.two_sample`: MMD (RBF), sliced Wasserstein-1 and energy
  distance on low-dimensional points ``[N, D]``.
- :mod:`~ddpm_tools.metrics.classifier`: the built-in digits feature network and the
  optional FID Inception-v3.
- :mod:`~ddpm_tools.metrics.evaluate_samples`: ``evaluate_samples`` behind
  ``ddpm-tools eval-samples``.
"""
