"""FOCUS (FinOps Open Cost and Usage Specification) 1.0 export of metered cost."""
