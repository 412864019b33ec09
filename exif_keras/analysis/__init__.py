"""Stage 6: studies, explanations, benchmarks."""
