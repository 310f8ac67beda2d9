"""The Kopf operator (kascade.operator): reconciles ModelCascades into their children and status.

Pure core: builders (`builders`, `build_tier`, `build_router`, `engine_*`,
`labels`), `cascade_resource`, `cluster_needs`, `plan`, `drift`,
`replacement`, `conditions`, `problems`, `status_patch`, `notices`, the
savings fold (`counter_slots`, `counters`), `permissions`, `settings`. Shell: `observe`, `apply`, `kube_api` and `kube_credentials`
(the API), `reconcile` and `handlers` (Kopf). Run it with `kascade operator`
(`main`).
"""
