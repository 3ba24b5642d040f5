"""`python -m omni_core.training --config X.yaml [dotted.key=value ...]`, also under `accelerate launch`."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ..errors import OmniGen2Error
from .config import load_config
from .loop import train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m omni_core.training", description=__doc__)
    parser.add_argument("--config", help="a training YAML (configs/training/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value, e.g. train.steps=100 lora.rank=16")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        output = train(load_config(args.config, args.overrides))
    except OmniGen2Error as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if os.environ.get("RANK", "0") == "0":  # once, not from every process of a distributed run
        print(f"trained model written to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
