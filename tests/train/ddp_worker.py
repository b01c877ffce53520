"""Run by ``torchrun`` in tests/train/test_distributed.py: trains the run described by the
JSON config in argv[1] (``--resume`` as argv[2] continues it) and saves this rank's final
weights, so the test can check that every rank ends with identical weights."""

from __future__ import annotations

import json
import os
import sys

import torch

from retrieval_bio.config import RunConfig
from retrieval_bio.train import train_run

if __name__ == "__main__":
    cfg = RunConfig.from_dict(json.loads(sys.argv[1]))
    result = train_run(cfg, resume=len(sys.argv) > 2 and sys.argv[2] == "--resume")
    rank = os.environ["RANK"]
    # named_buffers: also the non-persistent ones (brSF's current magnitudes M)
    state = {**dict(result.model.named_buffers()), **result.model.state_dict()}
    torch.save(state, f"{cfg.out}.rank{rank}.pt")
