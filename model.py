"""Models for the Resonance RoPE reference: the tiny PosGen Transformer (Sec. 6.1, App. C.1) and a
from-scratch LLaMA with its checkpoint loader (Sec. 6.2, App. C.2). Position encodings come from resonance.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import resonance

# ======================================== TinyTransformer (PosGen) ========================================


# ======================================== Llama ========================================
