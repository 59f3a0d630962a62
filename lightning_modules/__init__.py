"""LightningModules: the shared base (`CausalLMModule`) and one module per method."""

from lightning_modules.base import CausalLMModule
from lightning_modules.disc import DiSCModule
from lightning_modules.dpo import DPOModule
from lightning_modules.forward import CausalLMWithLoss, TeacherInputs
from lightning_modules.mix_cpt import MixCPTModule
from lightning_modules.modeling import LoraSettings, ModelSource
from lightning_modules.schedulers import WarmupCosineLR
from lightning_modules.talr import TALRModule
from lightning_modules.teacher import Teacher, TeacherSettings
from lightning_modules.trait import TRAITModule

__all__ = [
    "CausalLMModule",
    "CausalLMWithLoss",
    "DPOModule",
    "DiSCModule",
    "LoraSettings",
    "MixCPTModule",
    "ModelSource",
    "TALRModule",
    "TRAITModule",
    "Teacher",
    "TeacherInputs",
    "TeacherSettings",
    "WarmupCosineLR",
]
