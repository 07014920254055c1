"""Auxiliary priors p_aux(x_t) for chains that start below T (Franzese et al. 2023).

Glossary: ``t`` the diffusion time a prior models (1 <= t < T); ``p_aux`` the fitted
density of the diffused marginal q(x_t) = E_{x_0} N(sqrt(alpha_bar_t) x_0,
(1 - alpha_bar_t) I); ``prior cost`` E log q(x_t|x_0) - E log p_aux(x_t), the prior term
of the negative ELBO of a chain starting at t (nats per example).

* :mod:`~ddpm_tools.priors.gmm`: Gaussian mixture by EM; :mod:`~ddpm_tools.priors.flow`:
  affine-coupling flow; :mod:`~ddpm_tools.priors.model`: :class:`AuxPrior`;
* :mod:`~ddpm_tools.priors.fit`: fitting on the diffused train split (:func:`train_priors`);
* :mod:`~ddpm_tools.priors.store`: ``<set>/priors`` (:func:`load_priors`, :func:`save_prior`);
* :mod:`~ddpm_tools.priors.terms`: the prior term and the start-time check.
"""

from ddpm_tools.priors.fit import FitSettings, fit_prior, train_priors
from ddpm_tools.priors.flow import CouplingFlow, FlowConfig, fit_flow
from ddpm_tools.priors.gmm import GaussianMixture, GMMConfig, fit_gmm
from ddpm_tools.priors.model import KINDS, AuxPrior, PriorConfig, PriorInfo, make_config
from ddpm_tools.priors.store import load_priors, prior_fingerprint, priors_dir, save_prior
from ddpm_tools.priors.terms import aux_prior_nats, neg_entropy_q, start_priors

__all__ = [
    "KINDS",
    "AuxPrior",
    "CouplingFlow",
    "FitSettings",
    "FlowConfig",
    "GMMConfig",
    "GaussianMixture",
    "PriorConfig",
    "PriorInfo",
    "aux_prior_nats",
    "fit_flow",
    "fit_gmm",
    "fit_prior",
    "load_priors",
    "make_config",
    "neg_entropy_q",
    "prior_fingerprint",
    "priors_dir",
    "save_prior",
    "start_priors",
    "train_priors",
]
