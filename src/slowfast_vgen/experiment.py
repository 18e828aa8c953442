"""An experiment YAML as objects without running it: :func:`load_experiment` (model, datamodule, trainer) and
:func:`load_system` (with UNet weights from safetensors or a checkpoint), used by the demo, ``generate``,
``evaluate``, ``bench memory``, notebooks and tests; and where the shipped demo model lives."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from slowfast_vgen.checkpoints import unet_state_from_checkpoint
from slowfast_vgen.errors import UserInputError

if TYPE_CHECKING:
    from slowfast_vgen.lightning_cli import SfvgenCLI

PACKAGE = Path(__file__).resolve().parent
# Package data (setup.cfg [options.package_data]), not the source tree's experiments/: a symlink to
# experiments/world_demo.yaml in the repository, a real file in a wheel (tests/test_packaging.py).
DEFAULT_CONFIG = PACKAGE / "configs" / "world_demo.yaml"
DEFAULT_WEIGHTS = PACKAGE / "assets" / "world_demo.safetensors"


def load_experiment(path: str, overrides: list[str] | None = None) -> SfvgenCLI:
    """Parse and instantiate an experiment YAML without running it (tests, notebooks, the demo).

    The returned object has ``.model``, ``.datamodule``, ``.trainer`` and the parsed ``.config``.
    """
    from slowfast_vgen.lightning_cli import SfvgenCLI  # imports Lightning: only when an experiment is loaded

    return SfvgenCLI(args=["-c", str(path), *(overrides or [])], run=False)


def load_system(
    config: str, weights: str | None = None, ckpt: str | None = None, overrides: list[str] | None = None
) -> SfvgenCLI:
    """An experiment's model and datamodule (no logger, no callbacks), with UNet weights from a safetensors
    file (``weights``) or a Lightning checkpoint (``ckpt``) if given. Used by demo, generate and evaluate."""
    if not Path(config).is_file():
        raise UserInputError(f"config {str(config)!r} not found; run from a clone of the repository or pass --config")
    cli = load_experiment(str(config), ["--trainer.logger", "false", "--trainer.callbacks", "[]", *(overrides or [])])
    if weights:
        from slowfast_vgen.systems.slow import load_unet_weights

        load_unet_weights(cli.model.unet, weights, cli.model.diffusion.prediction_type)
    elif ckpt:
        from slowfast_vgen.systems.slow import check_prediction_type

        state = unet_state_from_checkpoint(ckpt)
        check_prediction_type(state["prediction_type"], cli.model.diffusion.prediction_type, f"checkpoint {ckpt!r}")
        cli.model.unet.load_state_dict(state["unet"])
    return cli
