"""``python -m retrieval_bio`` (and ``torchrun -m retrieval_bio``) is the ``retrieval-bio``
command."""

from .cli import app

app(prog_name="retrieval-bio")
