"""The Kopf operator (kascade.operator). Not built yet: see issue 3."""
