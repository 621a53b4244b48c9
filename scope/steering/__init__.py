"""Steering: interventions on SAE features, the ``steer`` context, steered generation, sweeps.

- :mod:`~scope.steering.interventions`: ``Add``, ``Clamp``, ``Ablate``, ``Scale``;
- :mod:`~scope.steering.context`: ``steer(model, sae, *interventions)``, the context that
  installs them as hooks and always removes them;
- :mod:`~scope.steering.directions`: ``Direction`` and ``diffmean``, raw directions steered like features;
- :mod:`~scope.steering.steered_generation`: ``generate(model, text_or_texts, sae=..., steering=[...])``,
  batched, with per-row steering; ``generate_completions`` for token counts and streams;
- :mod:`~scope.steering.sweeps`: ``sweep(...)``, strengths x texts with concept and fluency, batched.
"""

from scope.feature_stats import max_activation, max_activations, set_max_activations
from scope.steering.context import Positions, SteeringState, steer, steered
from scope.steering.directions import Direction, diffmean
from scope.steering.interventions import Ablate, Add, Clamp, Intervention, Scale, as_list, describe
from scope.steering.steered_generation import generate, generate_completions
from scope.steering.sweeps import reread, sweep

__all__ = [
    "Ablate",
    "Add",
    "Clamp",
    "Direction",
    "Intervention",
    "Positions",
    "Scale",
    "SteeringState",
    "as_list",
    "describe",
    "diffmean",
    "generate",
    "generate_completions",
    "max_activation",
    "max_activations",
    "reread",
    "set_max_activations",
    "steer",
    "steered",
    "sweep",
]
