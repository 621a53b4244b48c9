"""``scope generate`` and ``scope steer``."""

from __future__ import annotations

import argparse

import pandas as pd

import scope
from scope.cli.common import check_model, model_and_sae, prompt, table
from scope.steering import describe


def generate(args: argparse.Namespace) -> None:
    check_model(args.model)
    model = scope.load_model(args.model)
    text = scope.generate(
        model,
        prompt(args),
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
    )
    print(text)


def steer(args: argparse.Namespace) -> None:
    if args.mode == "add" and args.unit is not None:
        raise ValueError(
            f"--unit {args.unit} applies to --mode clamp only: --mode add adds --value times the "
            "feature's decoder direction, which has no unit. Drop --unit, or use --mode clamp."
        )
    model, sae = model_and_sae(args)
    intervention: scope.steering.Intervention
    if args.mode == "add":
        intervention = scope.Add(args.feature, args.value)
    else:
        intervention = scope.Clamp(args.feature, args.value, unit=args.unit or "act")
    kwargs = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed)
    steered = scope.generate(model, prompt(args), sae=sae, steering=[intervention], positions=args.positions, **kwargs)
    plain = scope.generate(model, prompt(args), **kwargs)
    print(table(pd.DataFrame({"": ["unsteered", describe([intervention])], "continuation": [plain, steered]})))
