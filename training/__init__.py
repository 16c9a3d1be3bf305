"""crossview_training: offline PyTorch training, evaluation and export (the `[train]` extra).

Installed under this name through setup.py's package_dir; the runtime never imports it.
"""

__version__ = "0.1.0"
