"""Theory of the reversal curse (Zhu et al. 2024): the bilinear model and the one-layer effective weights.

Needs only torch: nothing here imports the rest of :mod:`revinterp`.

- :mod:`revinterp.theory.bilinear`: ``l(y | x) = x^T Θ y`` with fixed random embeddings; a step on ``x -> y``
  moves ``y^T Θ x`` only by ``O(1/d)``, so the held-out reverse loss stays put while the training loss falls.
- :mod:`revinterp.theory.one_layer`: the token-to-next-token effective weights ``Y`` of a one-layer transformer;
  ``Y[A_i, B_i]`` grows with training while the held-out ``Y[B_i, A_i]`` keeps its initial value.
"""

from revinterp.theory.bilinear import (
    BilinearRun,
    ExponentSweep,
    LogitChange,
    bilinear_loss_and_gradient,
    entity_embeddings,
    example_gradient,
    exponent_vs_dimension,
    reverse_logit_change,
    train_bilinear,
)
from revinterp.theory.one_layer import EffectiveWeightsRun, effective_weights_gradient, train_effective_weights

__all__ = [
    "BilinearRun",
    "EffectiveWeightsRun",
    "ExponentSweep",
    "LogitChange",
    "bilinear_loss_and_gradient",
    "effective_weights_gradient",
    "entity_embeddings",
    "example_gradient",
    "exponent_vs_dimension",
    "reverse_logit_change",
    "train_bilinear",
    "train_effective_weights",
]
