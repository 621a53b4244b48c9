"""``scope shield``: ShieldGemma's P(Yes) per policy."""

from __future__ import annotations

import argparse

import pandas as pd

import scope
from scope import shield as shieldgemma
from scope.cli.common import check_model, table


def shield(args: argparse.Namespace) -> None:
    policies = args.policies or list(shieldgemma.TRAINED_HARM_TYPES)
    for key in policies:  # fail on a bad key before loading a model
        shieldgemma.resolve_policy(key)
    check_model(args.model)
    model = scope.load_model(args.model, weights=args.weights)
    if not args.model.startswith("shieldgemma"):
        print(f"note: {args.model} is not ShieldGemma; P(Yes) below is a stand-in, not a safety verdict.\n")
    # One policy per call, as the model card recommends (ShieldGemma was trained on one at a time).
    rows = [
        {
            "policy": key,
            "P(Yes)": shieldgemma.score(model, args.prompt, key, responses=args.response, progress=False)[0],
        }
        for key in policies
    ]
    print(table(pd.DataFrame(rows).round(4)))
