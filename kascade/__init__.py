"""Kascade: a Kubernetes-native model cascade for LLMs.

The folders of the repository map under this package: `api/` is `kascade.api`,
`runtime/` is `kascade.runtime`, `operator/` is `kascade.operator`.
"""

__version__ = "0.1.0"
