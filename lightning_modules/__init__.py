"""LightningModules: the shared base (`CausalLMModule`) and one module per method."""

from lightning_modules.base import CausalLMModule, LoraSettings
from lightning_modules.schedulers import WarmupCosineLR

__all__ = ["CausalLMModule", "LoraSettings", "WarmupCosineLR"]
