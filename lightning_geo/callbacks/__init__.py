"""GEO callbacks: ``DynamicCurriculum`` and ``SparsityAwareLR`` (each lands with its own issue)."""
