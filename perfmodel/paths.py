"""Where the data folders live (specs, calibration profiles, results), relative to the repo."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPECS_DIR = ROOT / "specs"
HARDWARE_DIR = SPECS_DIR / "hardware"
MODELS_DIR = SPECS_DIR / "models"
PROFILES_DIR = ROOT / "calibration" / "profiles"
CALIBRATION_DATA_DIR = ROOT / "calibration" / "data"
RESULTS_DIR = ROOT / "validate" / "results"
