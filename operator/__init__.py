"""The Kopf operator (kascade.operator): reconciles ModelCascades into their children and status.

Pure core: builders (`builders`, `build_tier`, `build_router`, `engine_*`),
`plan`, `conditions`, `problems`, `status_patch`, `notices`, `counters`,
`permissions`. Shell: `observe`, `apply`, `kube_api` and `kube_credentials`
(the API), `reconcile` and `handlers` (Kopf). Run it with `kascade operator`
(`main`).
"""
