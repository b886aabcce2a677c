import sys
from pathlib import Path

# The relay process helpers are shared with the Python client's tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "python" / "tests"))
