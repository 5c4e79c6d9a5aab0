import sys
from pathlib import Path

# tests/fakes.py is imported as `fakes` by the core tests.
sys.path.insert(0, str(Path(__file__).parent))
