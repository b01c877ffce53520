"""retrieval-bio: how the learning rule behind a network changes its adversarial robustness.

Pipeline: ``datasets`` -> ``models`` -> ``rules`` -> ``losses`` -> ``train`` -> ``index``
-> ``eval`` -> ``attacks``. Images are float tensors in [0, 1] everywhere.
"""

__version__ = "0.1.0"
