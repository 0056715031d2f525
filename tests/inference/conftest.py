"""Make the tiny-model builders (conv_nets.py) importable from the tests beside them."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
