"""Where the data folders live: specs, calibration profiles and tables, committed results.

In a source checkout (an editable install, or the device running from the tree) they are the
checkout's own ``specs/``, ``calibration/`` and ``validate/`` folders, so that what a command writes
lands beside the committed data. An installed wheel carries a copy of them under
``perfmodel/_data/`` (see ``[tool.setuptools.package-dir]`` in pyproject.toml).
"""

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
_CHECKOUT = PACKAGE_DIR.parent
_BUNDLED = PACKAGE_DIR / "_data"


def _is_checkout(root: Path) -> bool:
    return (root / "pyproject.toml").is_file() and (root / "specs" / "hardware").is_dir()


#: The folder holding ``specs/``, ``calibration/`` and ``validate/`` data.
ROOT = _CHECKOUT if _is_checkout(_CHECKOUT) else _BUNDLED
IS_CHECKOUT = ROOT == _CHECKOUT
SPECS_DIR = ROOT / "specs"
HARDWARE_DIR = SPECS_DIR / "hardware"
MODELS_DIR = SPECS_DIR / "models"
STUDIES_DIR = SPECS_DIR / "studies"  # published studies' claims, as data
PROFILES_DIR = ROOT / "calibration" / "profiles"
CALIBRATION_DATA_DIR = ROOT / "calibration" / "data"
RESULTS_DIR = ROOT / "validate" / "results"


def results_file(backend: str, gpu: str) -> Path:
    """The committed results of a backend on a GPU (``validate/results/<gpu>-<backend>.jsonl``)."""
    return RESULTS_DIR / f"{gpu.split('-')[0]}-{backend}.jsonl"


def moe_kernel_file(results: Path) -> Path:
    """The companion file of a results file holding vLLM's fused-MoE kernel timed alone, pass by
    pass, at its shipped tile tables and at its default rule (``scripts/bench_moe_tiles.py``)."""
    results = Path(results)
    return results.with_name(f"{results.stem}-moe-kernel{results.suffix}")


def mixed_steps_file(results: Path) -> Path:
    """The companion file of a results file holding profiled engine steps that add a prompt to
    running decodes (``scripts/profile_mixed_steps.py``)."""
    results = Path(results)
    return results.with_name(f"{results.stem}-mixed-steps{results.suffix}")


def changes_file(engine: str, gpu: str) -> Path:
    """A GPU's change band of an engine, the model's changes against measured pairs
    (``validate/results/<gpu>-<engine>-changes.json``, :mod:`perfmodel.validate.change_band`)."""
    return RESULTS_DIR / f"{gpu.split('-')[0]}-{engine}-changes.json"
