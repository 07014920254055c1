"""Likelihood of a set on held-out data: the ELBO of any schedule with standard errors
(:mod:`.elbo`) and the probability-flow ODE likelihood (:mod:`.ode`)."""
