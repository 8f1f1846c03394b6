"""The provisioning layer's public surface: the one factory the composition root calls and the
settings types it takes. Everything else in this package is internal (an import-linter contract
keeps ``bot/`` out of it)."""

from provisioning.backend import Backend, SystemClock, build_backend, generate_audit_key
from provisioning.settings import DexSettings, EngineSettings, KubeflowSettings, ProvisioningSettings

__all__ = [
    "Backend",
    "DexSettings",
    "EngineSettings",
    "KubeflowSettings",
    "ProvisioningSettings",
    "SystemClock",
    "build_backend",
    "generate_audit_key",
]
