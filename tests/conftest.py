"""Shared test set-up: import the top-level scripts as modules, never touch a model hub."""
import os
import sys

# A missing CLIP/IQA download must fail at once instead of hanging on a dead network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
